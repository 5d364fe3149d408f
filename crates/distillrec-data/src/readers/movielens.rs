//! MovieLens 100k (`u.data`, `u.item`) and 1M (`ratings.dat`, `movies.dat`).
//!
//! Titles are Latin-1. Every rating is an interaction unless
//! `min_rating` filters it later. A rating of an item that the item file
//! does not list is an error naming the line, because it means the two files
//! do not belong together. Tie rule: see [`crate::prepare`] (file order).

use std::path::Path;

use crate::error::{DataError, Result};
use crate::fsutil::{for_each_line, require_dir, require_file, Encoding};
use crate::prepare::{RawInteraction, RawLog};

/// Parses an integer field, naming the field on failure.
pub(crate) fn int_field<T: std::str::FromStr>(
    path: &Path,
    line: usize,
    what: &str,
    s: &str,
) -> Result<T> {
    s.trim()
        .parse::<T>()
        .map_err(|_| DataError::parse(path, line, format!("{what} '{s}' is not an integer")))
}

/// Parses a number field, naming the field on failure.
pub(crate) fn num_field(path: &Path, line: usize, what: &str, s: &str) -> Result<f32> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(DataError::parse(
            path,
            line,
            format!("{what} '{s}' is not a number"),
        )),
    }
}

fn fields<'a>(
    path: &Path,
    line: usize,
    text: &'a str,
    sep: &str,
    want: usize,
) -> Result<Vec<&'a str>> {
    let f: Vec<&str> = text.split(sep).collect();
    if f.len() < want {
        return Err(DataError::parse(
            path,
            line,
            format!(
                "expected at least {want} fields separated by '{}', found {}",
                sep.escape_default(),
                f.len()
            ),
        ));
    }
    Ok(f)
}

/// Reads the item file: `id<sep>title<sep>...`.
fn read_items(log: &mut RawLog, path: &Path, sep: &str) -> Result<()> {
    for_each_line(path, Encoding::Latin1, |line, text| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let f = fields(path, line, text, sep, 2)?;
        let id: u64 = int_field(path, line, "movie id", f[0])?;
        let idx = log.items.intern(&id.to_string());
        log.titles.insert(idx, f[1].trim().to_string());
        Ok(())
    })?;
    if log.items.is_empty() {
        return Err(DataError::file(path, "no items"));
    }
    Ok(())
}

/// Reads the ratings file: `user<sep>item<sep>rating<sep>timestamp`.
fn read_ratings(log: &mut RawLog, path: &Path, sep: &str) -> Result<()> {
    let n_catalogue = log.items.len();
    for_each_line(path, Encoding::Latin1, |line, text| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let f = fields(path, line, text, sep, 4)?;
        let user: u64 = int_field(path, line, "user id", f[0])?;
        let item: u64 = int_field(path, line, "item id", f[1])?;
        let rating = num_field(path, line, "rating", f[2])?;
        let timestamp: i64 = int_field(path, line, "timestamp", f[3])?;
        let item = match log.items.get(&item.to_string()) {
            Some(i) if (i as usize) < n_catalogue => i,
            _ => {
                return Err(DataError::parse(
                    path,
                    line,
                    format!("item id {item} is not in the item file"),
                ))
            }
        };
        let user = log.users.intern(&user.to_string());
        log.interactions.push(RawInteraction {
            user,
            item,
            timestamp,
            rating: Some(rating),
        });
        Ok(())
    })?;
    if log.interactions.is_empty() {
        return Err(DataError::file(path, "no ratings"));
    }
    Ok(())
}

/// Reads MovieLens 100k from a directory holding `u.data` and `u.item`.
pub fn read_ml_100k(dir: &Path) -> Result<RawLog> {
    require_dir(dir)?;
    let items = require_file(dir, "u.item")?;
    let data = require_file(dir, "u.data")?;
    let mut log = RawLog::default();
    read_items(&mut log, &items, "|")?;
    read_ratings(&mut log, &data, "\t")?;
    Ok(log)
}

/// Reads MovieLens 1M from a directory holding `ratings.dat` and `movies.dat`.
pub fn read_ml_1m(dir: &Path) -> Result<RawLog> {
    require_dir(dir)?;
    let movies = require_file(dir, "movies.dat")?;
    let ratings = require_file(dir, "ratings.dat")?;
    let mut log = RawLog::default();
    read_items(&mut log, &movies, "::")?;
    read_ratings(&mut log, &ratings, "::")?;
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn ml1m(ratings: &[u8]) -> (tempfile::TempDir, Result<RawLog>) {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "movies.dat",
            b"1::Toy Story (1995)::Animation\n2::Caf\xe9 (1999)::Drama\n",
        );
        write(d.path(), "ratings.dat", ratings);
        let r = read_ml_1m(d.path());
        (d, r)
    }

    #[test]
    fn reads_latin1_titles_and_ratings() {
        let (_d, log) = ml1m(b"1::1::5::100\n1::2::3::101\n");
        let log = log.unwrap();
        assert_eq!(log.interactions.len(), 2);
        assert_eq!(log.titles[&log.items.get("2").unwrap()], "Café (1999)");
        assert_eq!(log.interactions[1].rating, Some(3.0));
    }

    #[test]
    fn truncated_line_names_file_and_line() {
        let (_d, e) = ml1m(b"1::1::5::100\n1::2::3\n");
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("ratings.dat:2: expected at least 4 fields"),
            "{e}"
        );
    }

    #[test]
    fn non_numeric_id_names_file_and_line() {
        let (_d, e) = ml1m(b"1::1::5::100\n1::1::5::100\nx1::2::3::5\n");
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("ratings.dat:3: user id 'x1' is not an integer"),
            "{e}"
        );
    }

    #[test]
    fn unknown_item_names_file_and_line() {
        let (_d, e) = ml1m(b"1::7::5::100\n");
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("ratings.dat:1: item id 7 is not in the item file"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_and_missing_dir() {
        let (_d, e) = ml1m(b"");
        let e = e.unwrap_err().to_string();
        assert!(e.ends_with("ratings.dat: file is empty"), "{e}");
        let e = read_ml_100k(Path::new("/nonexistent/ml-100k"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/nonexistent/ml-100k: directory does not exist");
    }

    #[test]
    fn ml100k_layout() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "u.item",
            b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|GoldenEye (1995)|x\n",
        );
        write(
            d.path(),
            "u.data",
            b"196\t2\t3\t881250949\n186\t1\t3\t891717742\n",
        );
        let log = read_ml_100k(d.path()).unwrap();
        assert_eq!(log.users.len(), 2);
        assert_eq!(log.interactions[0].item, log.items.get("2").unwrap());
        let e = {
            write(
                d.path(),
                "u.data",
                b"196\t2\t3\t881250949\n186\t1\tthree\t891717742\n",
            );
            read_ml_100k(d.path()).unwrap_err().to_string()
        };
        assert!(
            e.contains("u.data:2: rating 'three' is not a number"),
            "{e}"
        );
    }
}
