//! MovieLens 100k (`u.data`, `u.item`) and 1M (`ratings.dat`, `movies.dat`).
//!
//! Encoding of the item file: UTF-8 when the whole file is valid UTF-8,
//! else Latin-1 (the original GroupLens files are Latin-1; re-encoded
//! copies are UTF-8; a Latin-1 file of real titles is practically never
//! valid UTF-8). The ratings files are ASCII. An item id listed twice is an
//! error naming both lines. In ML-1M `movies.dat` the title is everything
//! between the first and the last `::` (titles may contain `::`; the genres
//! are the last field). Every rating is an interaction unless
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
    s.trim().parse::<T>().map_err(|_| {
        let why = match s.trim().parse::<i128>() {
            Ok(v) if v < 0 => "is negative; it must be a non-negative integer",
            Ok(_) => "is too large for this field",
            Err(_) => "is not an integer",
        };
        DataError::parse(path, line, format!("{what} '{s}' {why}"))
    })
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

/// Where the title sits in a line of the item file.
#[derive(Clone, Copy)]
enum TitleField {
    /// The second field (ML-100k `u.item`: `id|title|date|...`).
    Second,
    /// Everything between the first and the last separator (ML-1M
    /// `movies.dat`: `id::title::genres`, titles may contain `::`).
    Middle,
}

/// Reads the item file: `id<sep>title<sep>...`.
fn read_items(log: &mut RawLog, path: &Path, sep: &str, title: TitleField) -> Result<()> {
    let encoding = crate::fsutil::detect_encoding(path)?;
    let mut first_line: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for_each_line(path, encoding, |line, text| {
        if text.trim().is_empty() {
            return Ok(());
        }
        let f = fields(path, line, text, sep, 2)?;
        let id: u64 = int_field(path, line, "movie id", f[0])?;
        if let Some(first) = first_line.insert(id, line) {
            return Err(DataError::parse(
                path,
                line,
                format!("movie id {id} is listed twice (first on line {first})"),
            ));
        }
        let t = match title {
            TitleField::Middle if f.len() > 2 => f[1..f.len() - 1].join(sep),
            _ => f[1].to_string(),
        };
        let idx = log.items.intern(&id.to_string());
        log.titles.insert(idx, t.trim().to_string());
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
    read_items(&mut log, &items, "|", TitleField::Second)?;
    read_ratings(&mut log, &data, "\t")?;
    Ok(log)
}

/// Reads MovieLens 1M from a directory holding `ratings.dat` and `movies.dat`.
pub fn read_ml_1m(dir: &Path) -> Result<RawLog> {
    require_dir(dir)?;
    let movies = require_file(dir, "movies.dat")?;
    let ratings = require_file(dir, "ratings.dat")?;
    let mut log = RawLog::default();
    read_items(&mut log, &movies, "::", TitleField::Middle)?;
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

    #[test]
    fn utf8_item_file_is_decoded_as_utf8() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "movies.dat", "1::Café (1999)::Drama\n".as_bytes());
        write(d.path(), "ratings.dat", b"1::1::5::100\n");
        let log = read_ml_1m(d.path()).unwrap();
        assert_eq!(log.titles[&log.items.get("1").unwrap()], "Café (1999)");
    }

    #[test]
    fn ml1m_title_with_double_colon_is_kept_whole() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "movies.dat", b"1::Foo:: Bar (1999)::Comedy\n");
        write(d.path(), "ratings.dat", b"1::1::5::100\n");
        let log = read_ml_1m(d.path()).unwrap();
        assert_eq!(log.titles[&log.items.get("1").unwrap()], "Foo:: Bar (1999)");
    }

    #[test]
    fn duplicated_item_id_names_both_lines() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "u.item",
            b"1|A (1995)|x\n2|B (1995)|x\n1|C (1995)|x\n",
        );
        write(d.path(), "u.data", b"196\t2\t3\t881250949\n");
        let e = read_ml_100k(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("u.item:3: movie id 1 is listed twice (first on line 1)"),
            "{e}"
        );
    }
}
