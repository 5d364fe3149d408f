//! Generic delimited interactions: CSV or TSV with a header row, including
//! RecBole's atomic files (`*.inter`, `*.item`).
//!
//! A directory holds an interactions file, the first that exists of
//! `interactions.csv`, `interactions.tsv`, `*.inter`, and optionally an item
//! file, the first of `items.csv`, `items.tsv`, `*.item`. Each file is
//! tab-separated if its header line holds a tab, else comma-separated;
//! fields may be quoted (`"Heat, The (1995)"`) and are trimmed.
//!
//! Header names are matched after dropping a RecBole type suffix
//! (`user_id:token` is `user_id`) and lowercasing:
//! - user `user`, `user_id`, `userid`; item `item`, `item_id`, `itemid`,
//!   `asin`; time `timestamp`, `time`, `ts` (all three required);
//! - rating `rating` (optional; an empty field is no rating);
//! - in the item file: the item column and a title column `title`,
//!   `movie_title` or `name`. An item listed twice is an error; items that
//!   the item file does not list are allowed and get no title.
//!
//! Ids are strings kept as written. A timestamp is an integer or a float
//! with no fractional part (RecBole writes `881250949.0`).
//!
//! Tie rule: interactions are kept in file order, so the stable sort of
//! [`crate::prepare`] orders same-timestamp rows as the file does.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::fsutil::require_dir;
use crate::prepare::{RawInteraction, RawLog};
use crate::readers::movielens::num_field;

const USER: &[&str] = &["user", "user_id", "userid"];
const ITEM: &[&str] = &["item", "item_id", "itemid", "asin"];
const TIME: &[&str] = &["timestamp", "time", "ts"];
const RATING: &[&str] = &["rating"];
const TITLE: &[&str] = &["title", "movie_title", "name"];

/// The first of `fixed` in `dir`, else the one file ending in `.{ext}`.
fn pick(dir: &Path, fixed: &[&str], ext: &str) -> Result<Option<PathBuf>> {
    for name in fixed {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(Some(p));
        }
    }
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            let names: Vec<String> = found
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            Err(DataError::file(
                dir,
                format!("several *.{ext} files ({}); keep one", names.join(", ")),
            ))
        }
    }
}

/// Turns a csv error into a one-line error naming the file and line.
fn csv_err(path: &Path, delim: u8, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line() as usize);
    let msg = match e.into_kind() {
        csv::ErrorKind::Io(err) => return DataError::io(path, err),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "expected {expected_len} fields separated by {}, found {len}",
            if delim == b'\t' { "tabs" } else { "commas" }
        ),
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 ({err})"),
        other => format!("bad row: {other:?}"),
    };
    match line {
        Some(line) => DataError::parse(path, line, msg),
        None => DataError::file(path, msg),
    }
}

/// A header name without its RecBole type suffix, lowercased.
fn normalise(h: &str) -> String {
    let h = h.trim_start_matches('\u{feff}');
    let base = h.split_once(':').map_or(h, |(a, _)| a);
    base.trim().to_lowercase()
}

/// An open delimited file positioned after its header.
struct Table {
    rdr: csv::Reader<crate::fsutil::LineLimited<File>>,
    delim: u8,
    cols: Vec<String>,
}

/// Opens `path`, picks the delimiter from its first line and reads the header.
fn open_table(path: &Path) -> Result<Table> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut first = Vec::new();
    let n = BufReader::new(crate::fsutil::LineLimited::new(
        file,
        crate::fsutil::MAX_LINE_BYTES,
    ))
    .read_until(b'\n', &mut first)
    .map_err(|e| DataError::io(path, e))?;
    if n == 0 {
        return Err(DataError::file(path, "file is empty"));
    }
    let delim = if first.contains(&b'\t') { b'\t' } else { b',' };
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(crate::fsutil::LineLimited::new(
            file,
            crate::fsutil::MAX_LINE_BYTES,
        ));
    let cols = rdr
        .headers()
        .map_err(|e| csv_err(path, delim, e))?
        .iter()
        .map(normalise)
        .collect();
    Ok(Table { rdr, delim, cols })
}

/// The index of the column named one of `names`; an error if it is required
/// and absent, or if several columns match.
fn column(
    path: &Path,
    cols: &[String],
    names: &[&str],
    what: &str,
    required: bool,
) -> Result<Option<usize>> {
    let hits: Vec<usize> = (0..cols.len())
        .filter(|&i| names.contains(&cols[i].as_str()))
        .collect();
    let article = if what == "item" { "an" } else { "a" };
    match hits.as_slice() {
        [] if required => Err(DataError::parse(
            path,
            1,
            format!(
                "header lacks {article} {what} column (one of {})",
                names.join(", ")
            ),
        )),
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        several => {
            let found: Vec<&str> = several.iter().map(|&i| cols[i].as_str()).collect();
            Err(DataError::parse(
                path,
                1,
                format!("header has several {what} columns ({})", found.join(", ")),
            ))
        }
    }
}

/// Calls `f(line, record)` for every data row; an error if there is none.
fn for_each_row(
    path: &Path,
    table: &mut Table,
    mut f: impl FnMut(usize, &csv::StringRecord) -> Result<()>,
) -> Result<()> {
    let mut rec = csv::StringRecord::new();
    let mut rows = 0usize;
    loop {
        match table.rdr.read_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(path, table.delim, e)),
        }
        let line = rec.position().map_or(0, |p| p.line() as usize);
        f(line, &rec)?;
        rows += 1;
    }
    if rows == 0 {
        return Err(DataError::file(path, "no data rows"));
    }
    Ok(())
}

/// A non-empty id field.
fn id_field<'a>(
    path: &Path,
    line: usize,
    what: &str,
    rec: &'a csv::StringRecord,
    col: usize,
) -> Result<&'a str> {
    match rec.get(col) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(DataError::parse(path, line, format!("{what} id is empty"))),
    }
}

/// An integer timestamp, or a float with no fractional part.
fn time_field(path: &Path, line: usize, s: &str) -> Result<i64> {
    if let Ok(v) = s.parse::<i64>() {
        return Ok(v);
    }
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e18 => Ok(v as i64),
        _ => Err(DataError::parse(
            path,
            line,
            format!("timestamp '{s}' is not an integer"),
        )),
    }
}

/// Reads the item file: ids and titles.
fn read_items(log: &mut RawLog, path: &Path) -> Result<()> {
    let mut table = open_table(path)?;
    let c_item = column(path, &table.cols, ITEM, "item", true)?.unwrap_or(0);
    let c_title = column(path, &table.cols, TITLE, "title", true)?.unwrap_or(0);
    let mut first_line: HashMap<u32, usize> = HashMap::new();
    for_each_row(path, &mut table, |line, rec| {
        let id = id_field(path, line, "item", rec, c_item)?;
        let idx = log.items.intern(id);
        if let Some(prev) = first_line.insert(idx, line) {
            return Err(DataError::parse(
                path,
                line,
                format!("item '{id}' is listed twice (first at line {prev})"),
            ));
        }
        let title = rec.get(c_title).unwrap_or("");
        if !title.is_empty() {
            log.titles.insert(idx, title.to_string());
        }
        Ok(())
    })
}

/// Reads the interactions file.
fn read_interactions(log: &mut RawLog, path: &Path) -> Result<()> {
    let mut table = open_table(path)?;
    let c_user = column(path, &table.cols, USER, "user", true)?.unwrap_or(0);
    let c_item = column(path, &table.cols, ITEM, "item", true)?.unwrap_or(0);
    let c_time = column(path, &table.cols, TIME, "time", true)?.unwrap_or(0);
    let c_rating = column(path, &table.cols, RATING, "rating", false)?;
    for_each_row(path, &mut table, |line, rec| {
        let user = id_field(path, line, "user", rec, c_user)?;
        let item = id_field(path, line, "item", rec, c_item)?;
        let timestamp = time_field(path, line, rec.get(c_time).unwrap_or(""))?;
        let rating = match c_rating.and_then(|c| rec.get(c)) {
            Some(s) if !s.is_empty() => Some(num_field(path, line, "rating", s)?),
            _ => None,
        };
        let user = log.users.intern(user);
        let item = log.items.intern(item);
        log.interactions.push(RawInteraction {
            user,
            item,
            timestamp,
            rating,
        });
        Ok(())
    })
}

/// Reads a generic CSV/TSV (or RecBole) directory; see the module doc.
pub fn read_generic(dir: &Path) -> Result<RawLog> {
    require_dir(dir)?;
    let inter =
        pick(dir, &["interactions.csv", "interactions.tsv"], "inter")?.ok_or_else(|| {
            DataError::file(
                dir,
                "no interactions file (interactions.csv, interactions.tsv or *.inter)",
            )
        })?;
    let items = pick(dir, &["items.csv", "items.tsv"], "item")?;
    let mut log = RawLog::default();
    if let Some(items) = items {
        read_items(&mut log, &items)?;
    }
    read_interactions(&mut log, &inter)?;
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn comma_csv_with_quoted_title() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "interactions.csv",
            "UserId,ItemId,Rating,Timestamp\nu1, i1 ,5,100\nu1,i2,,101\nu2,i9,3.5,99\n",
        );
        write(
            d.path(),
            "items.csv",
            "item_id,title,year\ni1,\"Heat, The\",1995\ni2,Up,2009\ni3,,2000\n",
        );
        let log = read_generic(d.path()).unwrap();
        assert_eq!(log.interactions.len(), 3);
        let i1 = log.items.get("i1").unwrap();
        assert_eq!(log.titles[&i1], "Heat, The");
        assert!(!log.titles.contains_key(&log.items.get("i3").unwrap()));
        assert_eq!(log.interactions[0].item, i1);
        assert_eq!(log.interactions[1].rating, None);
        let last = log.interactions[2];
        assert_eq!(log.items.name(last.item), "i9");
        assert!(!log.titles.contains_key(&last.item));
        assert_eq!((last.timestamp, last.rating), (99, Some(3.5)));
        write(d.path(), "items.csv", "item,name\ni1,A\ni2,B\ni1,C\n");
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("items.csv:4: item 'i1' is listed twice (first at line 2)"),
            "{e}"
        );
    }

    #[test]
    fn recbole_tsv_with_type_suffixes_and_float_timestamps() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "ml-100k.inter",
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949.0\n186\t302\t3\t891717742\n",
        );
        write(
            d.path(),
            "ml-100k.item",
            "item_id:token\tmovie_title:token_seq\trelease_year:token\n242\tKolya\t1996\n302\tL.A. Confidential\t1997\n",
        );
        let log = read_generic(d.path()).unwrap();
        assert_eq!(log.interactions[0].timestamp, 881250949);
        assert_eq!(log.interactions[0].rating, Some(3.0));
        assert_eq!(
            log.titles[&log.items.get("302").unwrap()],
            "L.A. Confidential"
        );
        assert_eq!(log.users.name(log.interactions[1].user), "186");
        write(
            d.path(),
            "ml-100k.inter",
            "user_id:token\titem_id:token\ttimestamp:float\n1\t242\t5\n2\t302\n",
        );
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("ml-100k.inter:3: expected 3 fields separated by tabs, found 2"),
            "{e}"
        );
    }

    #[test]
    fn missing_column_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "interactions.csv", "user,ts\nu1,1\n");
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.ends_with("interactions.csv:1: header lacks an item column (one of item, item_id, itemid, asin)"),
            "{e}"
        );
        write(d.path(), "interactions.csv", "item,ts\ni1,1\n");
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(
                "interactions.csv:1: header lacks a user column (one of user, user_id, userid)"
            ),
            "{e}"
        );
        write(
            d.path(),
            "interactions.csv",
            "user,item,time,ts\nu1,i1,1,1\n",
        );
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("interactions.csv:1: header has several time columns (time, ts)"),
            "{e}"
        );
    }

    #[test]
    fn bad_timestamp_names_its_line() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "interactions.csv",
            "user,item,timestamp\nu1,i1,1\n\"u2\",\"multi\nline\",2\nu3,i3,soon\n",
        );
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("interactions.csv:5: timestamp 'soon' is not an integer"),
            "{e}"
        );
        write(
            d.path(),
            "interactions.csv",
            "user,item,timestamp\nu1,i1,1.5\n",
        );
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("interactions.csv:2: timestamp '1.5' is not an integer"),
            "{e}"
        );
    }

    #[test]
    fn header_only_empty_file_and_missing_file() {
        let d = tempfile::tempdir().unwrap();
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(
            e.contains(": no interactions file (interactions.csv"),
            "{e}"
        );
        write(
            d.path(),
            "interactions.tsv",
            "user_id\titem_id\ttimestamp\n",
        );
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(e.ends_with("interactions.tsv: no data rows"), "{e}");
        write(d.path(), "interactions.tsv", "");
        let e = read_generic(d.path()).unwrap_err().to_string();
        assert!(e.ends_with("interactions.tsv: file is empty"), "{e}");
    }
}
