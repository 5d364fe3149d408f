//! Amazon reviews: the 2014 and 2018 dumps and the 2023 release, with an
//! optional metadata file for titles.
//!
//! Layouts, recognised per line by their keys (`.gz` is read transparently):
//! - 2014/2018 reviews `{"reviewerID","asin","overall","unixReviewTime",..}`:
//!   user `reviewerID`, item `asin`, rating `overall`, time in seconds;
//! - 2023 reviews `{"user_id","parent_asin","asin","rating","timestamp",..}`:
//!   user `user_id`, item `parent_asin` (else `asin`), rating `rating`, time
//!   in milliseconds (kept as is: it only orders);
//! - metadata `meta_*` `{"parent_asin" or "asin","title",..}`: titles, with
//!   `&amp; &lt; &gt; &quot; &#39;` decoded. An item listed twice (the 2018
//!   metadata repeats items) keeps its first non-empty title.
//!
//! A directory holds exactly one reviews file (`*.json`, `*.json.gz`,
//! `*.jsonl`, `*.jsonl.gz` not starting with `meta_`) and at most one `meta_`
//! file of the same kinds; a reviews file may also be passed alone (no titles
//! then). One reviews file keeps one layout, because seconds and milliseconds
//! do not compare. The 2014 metadata files are Python literals, not JSON, and
//! must be converted first (the error says how).
//!
//! Tie rule: reviews are kept in file order, so the stable sort of
//! [`crate::prepare`] orders same-timestamp reviews as the file does.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{DataError, Result};
use crate::fsutil::{for_each_line, Encoding};
use crate::prepare::{RawInteraction, RawLog};

/// File name endings of review and metadata files.
const EXTS: [&str; 4] = [".json", ".json.gz", ".jsonl", ".jsonl.gz"];

/// Appended to the error for a line that looks like a Python dict.
const PY_HINT: &str = "; 2014 metadata files are Python literals, not JSON: convert them first, e.g. \
     python -c \"import ast,json,sys; [print(json.dumps(ast.literal_eval(l))) for l in sys.stdin]\" \
     < meta_X.json > meta_X.jsonl";

/// The HTML entities decoded in titles (and no others).
const ENTITIES: [(&str, char); 5] = [
    ("&amp;", '&'),
    ("&lt;", '<'),
    ("&gt;", '>'),
    ("&quot;", '"'),
    ("&#39;", '\''),
];

/// The keys of a review line that matter; everything else is skipped.
#[derive(Deserialize)]
struct ReviewLine {
    #[serde(rename = "reviewerID")]
    reviewer_id: Option<Value>,
    user_id: Option<Value>,
    asin: Option<Value>,
    parent_asin: Option<Value>,
    overall: Option<Value>,
    rating: Option<Value>,
    #[serde(rename = "unixReviewTime")]
    unix_review_time: Option<Value>,
    timestamp: Option<Value>,
}

/// The keys of a metadata line that matter.
#[derive(Deserialize)]
struct MetaLine {
    asin: Option<Value>,
    parent_asin: Option<Value>,
    title: Option<Value>,
}

/// Which review layout a line has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    V2014,
    V2023,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::V2014 => "2014/2018",
            Layout::V2023 => "2023",
        }
    }
}

/// Parses one line as `T`, telling "not JSON" apart from "wrong shape".
fn parse_line<T: DeserializeOwned>(path: &Path, line: usize, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let what = full.strip_suffix(&suffix).unwrap_or(&full);
        let msg = if e.is_data() {
            format!("not a JSON object with the expected keys ({what})")
        } else {
            let mut m = format!("not JSON ({what} at column {})", e.column());
            if text.trim_start().starts_with("{'") {
                m.push_str(PY_HINT);
            }
            m
        };
        DataError::parse(path, line, msg)
    })
}

/// A string id from `v` (numbers are accepted and written out); `None` when
/// the key is absent or null.
fn id_value(path: &Path, line: usize, key: &str, v: Option<&Value>) -> Result<Option<String>> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(Value::String(_)) => Err(DataError::parse(
            path,
            line,
            format!("key '{key}' is empty"),
        )),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(DataError::parse(
            path,
            line,
            format!("key '{key}' is not a string id: {other}"),
        )),
    }
}

/// The error for a required key that is absent (or null).
fn missing(path: &Path, line: usize, key: &str, layout: Layout) -> DataError {
    DataError::parse(
        path,
        line,
        format!("missing key '{key}' ({} review layout)", layout.name()),
    )
}

/// A required string id.
fn req_id(
    path: &Path,
    line: usize,
    key: &str,
    v: Option<&Value>,
    layout: Layout,
) -> Result<String> {
    id_value(path, line, key, v)?.ok_or_else(|| missing(path, line, key, layout))
}

/// A required rating: a finite number (or a string holding one).
fn req_rating(
    path: &Path,
    line: usize,
    key: &str,
    v: Option<&Value>,
    layout: Layout,
) -> Result<f32> {
    let v = match v {
        None | Some(Value::Null) => return Err(missing(path, line, key, layout)),
        Some(v) => v,
    };
    let got = match v {
        Value::Number(n) => n.as_f64().map(|x| x as f32),
        Value::String(s) => s.trim().parse::<f32>().ok(),
        _ => None,
    };
    match got {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(DataError::parse(
            path,
            line,
            format!("key '{key}' value {v} is not a number"),
        )),
    }
}

/// A required timestamp: an integer, an integral float, or a string of digits.
fn req_time(path: &Path, line: usize, key: &str, v: Option<&Value>, layout: Layout) -> Result<i64> {
    let v = match v {
        None | Some(Value::Null) => return Err(missing(path, line, key, layout)),
        Some(v) => v,
    };
    let from_f64 =
        |x: f64| (x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e18).then_some(x as i64);
    let got = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(from_f64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    got.ok_or_else(|| {
        DataError::parse(
            path,
            line,
            format!("key '{key}' value {v} is not an integer timestamp"),
        )
    })
}

/// Decodes `&amp; &lt; &gt; &quot; &#39;` in one pass (`&amp;lt;` gives `&lt;`).
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match ENTITIES.iter().find(|(e, _)| rest.starts_with(e)) {
            Some((e, c)) => {
                out.push(*c);
                rest = &rest[e.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Drops a UTF-8 byte-order mark from the first line.
fn strip_bom(line: usize, text: &str) -> &str {
    if line == 1 {
        text.strip_prefix('\u{feff}').unwrap_or(text)
    } else {
        text
    }
}

/// Reads a reviews file into `log`.
fn read_reviews(log: &mut RawLog, path: &Path) -> Result<()> {
    let mut first: Option<(Layout, usize)> = None;
    for_each_line(path, Encoding::Utf8, |line, text| {
        let text = strip_bom(line, text);
        if text.trim().is_empty() {
            return Ok(());
        }
        let r: ReviewLine = parse_line(path, line, text)?;
        let layout = if r.reviewer_id.is_some() {
            Layout::V2014
        } else if r.user_id.is_some() {
            Layout::V2023
        } else {
            return Err(DataError::parse(
                path,
                line,
                "missing key 'reviewerID' (2014/2018 review layout) or 'user_id' (2023 review layout)",
            ));
        };
        match first {
            None => first = Some((layout, line)),
            Some((l, at)) if l != layout => {
                return Err(DataError::parse(
                    path,
                    line,
                    format!(
                        "a {} review in a file whose line {at} is a {} review; one file keeps one layout",
                        layout.name(),
                        l.name()
                    ),
                ))
            }
            Some(_) => {}
        }
        let (user, item, rating, timestamp) = match layout {
            Layout::V2014 => (
                req_id(path, line, "reviewerID", r.reviewer_id.as_ref(), layout)?,
                req_id(path, line, "asin", r.asin.as_ref(), layout)?,
                req_rating(path, line, "overall", r.overall.as_ref(), layout)?,
                req_time(
                    path,
                    line,
                    "unixReviewTime",
                    r.unix_review_time.as_ref(),
                    layout,
                )?,
            ),
            Layout::V2023 => {
                let item = match id_value(path, line, "parent_asin", r.parent_asin.as_ref())? {
                    Some(i) => i,
                    None => id_value(path, line, "asin", r.asin.as_ref())?.ok_or_else(|| {
                        DataError::parse(
                            path,
                            line,
                            "missing key 'parent_asin' (or 'asin') (2023 review layout)",
                        )
                    })?,
                };
                (
                    req_id(path, line, "user_id", r.user_id.as_ref(), layout)?,
                    item,
                    req_rating(path, line, "rating", r.rating.as_ref(), layout)?,
                    req_time(path, line, "timestamp", r.timestamp.as_ref(), layout)?,
                )
            }
        };
        let user = log.users.intern(&user);
        let item = log.items.intern(&item);
        log.interactions.push(RawInteraction {
            user,
            item,
            timestamp,
            rating: Some(rating),
        });
        Ok(())
    })?;
    if log.interactions.is_empty() {
        return Err(DataError::file(path, "no reviews"));
    }
    Ok(())
}

/// Reads a metadata file: titles for items, first non-empty title wins.
fn read_meta(log: &mut RawLog, path: &Path) -> Result<()> {
    for_each_line(path, Encoding::Utf8, |line, text| {
        let text = strip_bom(line, text);
        if text.trim().is_empty() {
            return Ok(());
        }
        let m: MetaLine = parse_line(path, line, text)?;
        let item = match id_value(path, line, "parent_asin", m.parent_asin.as_ref())? {
            Some(i) => i,
            None => id_value(path, line, "asin", m.asin.as_ref())?.ok_or_else(|| {
                DataError::parse(
                    path,
                    line,
                    "missing key 'asin' (or 'parent_asin') in metadata",
                )
            })?,
        };
        let title = match &m.title {
            Some(Value::String(s)) => decode_entities(s.trim()),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        if !title.is_empty() {
            let idx = log.items.intern(&item);
            log.titles.entry(idx).or_insert(title);
        }
        Ok(())
    })?;
    Ok(())
}

/// Finds the reviews file and the optional `meta_` file in `dir`.
fn find_files(dir: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut files: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, p)| !n.starts_with('.') && p.is_file())
        .collect();
    files.sort();
    let is_json = |n: &str| EXTS.iter().any(|e| n.ends_with(e));
    let (metas, reviews): (Vec<_>, Vec<_>) = files
        .iter()
        .filter(|(n, _)| is_json(n))
        .partition(|(n, _)| n.starts_with("meta_"));
    let names = |v: &[&(String, PathBuf)]| {
        v.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let review = match reviews.as_slice() {
        [one] => one.1.clone(),
        [] => {
            let found = files
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let found = if found.is_empty() {
                "no files".to_string()
            } else {
                found
            };
            return Err(DataError::file(
                dir,
                format!(
                    "no reviews file (*.json, *.json.gz, *.jsonl or *.jsonl.gz not starting with meta_); found: {found}"
                ),
            ));
        }
        several => {
            return Err(DataError::file(
                dir,
                format!(
                    "several reviews files ({}); keep one per directory",
                    names(several)
                ),
            ))
        }
    };
    let meta = match metas.as_slice() {
        [] => None,
        [one] => Some(one.1.clone()),
        several => {
            return Err(DataError::file(
                dir,
                format!(
                    "several metadata files ({}); keep one per directory",
                    names(several)
                ),
            ))
        }
    };
    Ok((review, meta))
}

/// Reads Amazon reviews from a directory (one reviews file plus an optional
/// `meta_*` file) or from a single reviews file; see the module doc.
pub fn read_amazon(path: &Path) -> Result<RawLog> {
    let (reviews, meta) = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => find_files(path)?,
        Ok(_) => {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("meta_") {
                return Err(DataError::file(
                    path,
                    "is a metadata file; pass the reviews file or the directory holding both",
                ));
            }
            (path.to_path_buf(), None)
        }
        Err(_) => return Err(DataError::file(path, "does not exist")),
    };
    let mut log = RawLog::default();
    read_reviews(&mut log, &reviews)?;
    if let Some(meta) = meta {
        read_meta(&mut log, &meta)?;
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn write_gz(dir: &Path, name: &str, text: &str) {
        let f = std::fs::File::create(dir.join(name)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
    }

    const R2018: &str = r#"{"overall": 5.0, "verified": true, "reviewTime": "05 13, 2014", "reviewerID": "U1", "asin": "B01", "style": {"Size:": " 1"}, "reviewText": "ok", "unixReviewTime": 1400000000}
{"reviewerID": "U2", "asin": "B02", "overall": 3.0, "unixReviewTime": 1400000100, "image": ["x"]}

{"reviewerID": "U1", "asin": "B02", "overall": 4.0, "unixReviewTime": 1400000050}
"#;

    #[test]
    fn reads_2018_gz_reviews_and_metadata_titles() {
        let d = tempfile::tempdir().unwrap();
        write_gz(d.path(), "All_Beauty.json.gz", R2018);
        write(
            d.path(),
            "meta_All_Beauty.json",
            "{\"asin\": \"B01\", \"title\": \"Soap &amp; Water &#39;XL&#39; &amp;lt;\"}\n\
             {\"asin\": \"B01\", \"title\": \"Later duplicate\"}\n\
             {\"asin\": \"B09\", \"title\": \"No reviews\"}\n\
             {\"asin\": \"B02\"}\n",
        );
        let log = read_amazon(d.path()).unwrap();
        assert_eq!(log.interactions.len(), 3);
        assert_eq!(log.users.len(), 2);
        let b01 = log.items.get("B01").unwrap();
        let b02 = log.items.get("B02").unwrap();
        assert_eq!(log.titles[&b01], "Soap & Water 'XL' &lt;");
        assert!(!log.titles.contains_key(&b02));
        assert_eq!(log.titles[&log.items.get("B09").unwrap()], "No reviews");
        let last = log.interactions[2];
        assert_eq!((last.user, last.item), (log.users.get("U1").unwrap(), b02));
        assert_eq!((last.timestamp, last.rating), (1400000050, Some(4.0)));
    }

    #[test]
    fn reads_2023_jsonl_with_parent_asin_fallback() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "Beauty.jsonl",
            "{\"rating\": 5.0, \"title\": \"t\", \"asin\": \"A1\", \"parent_asin\": \"P1\", \"user_id\": \"AG1\", \"timestamp\": 1588687728923, \"helpful_vote\": 0}\n\
             {\"rating\": 2, \"asin\": \"A2\", \"user_id\": \"AG2\", \"timestamp\": 1588687728924.0}\n",
        );
        write(
            d.path(),
            "meta_Beauty.jsonl",
            "{\"main_category\": \"x\", \"title\": \"Brush &quot;Pro&quot;\", \"parent_asin\": \"P1\"}\n",
        );
        let log = read_amazon(d.path()).unwrap();
        assert_eq!(log.interactions[0].item, log.items.get("P1").unwrap());
        assert_eq!(log.interactions[0].timestamp, 1588687728923);
        assert_eq!(log.interactions[1].item, log.items.get("A2").unwrap());
        assert_eq!(log.interactions[1].rating, Some(2.0));
        assert_eq!(log.titles[&log.items.get("P1").unwrap()], "Brush \"Pro\"");
        // A single reviews file can be passed too.
        let log = read_amazon(&d.path().join("Beauty.jsonl")).unwrap();
        assert_eq!(log.interactions.len(), 2);
        assert!(log.titles.is_empty());
    }

    #[test]
    fn missing_key_names_key_and_line() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "r.json",
            "{\"reviewerID\": \"U1\", \"asin\": \"B1\", \"overall\": 5.0, \"unixReviewTime\": 1}\n\
             {\"reviewerID\": \"U1\", \"asin\": \"B2\", \"overall\": 5.0}\n",
        );
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(e.contains("r.json:2: missing key 'unixReviewTime'"), "{e}");
        write(d.path(), "r.json", "{\"asin\": \"B1\", \"rating\": 5.0}\n");
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(e.contains("r.json:1: missing key 'reviewerID'"), "{e}");
        write(
            d.path(),
            "r.json",
            "{\"user_id\": \"U1\", \"parent_asin\": \"B1\", \"rating\": 5.0, \"timestamp\": 1}\n\
             {\"reviewerID\": \"U1\", \"asin\": \"B2\", \"overall\": 5.0, \"unixReviewTime\": 1}\n",
        );
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("r.json:2: a 2014/2018 review in a file whose line 1 is a 2023"),
            "{e}"
        );
    }

    #[test]
    fn non_json_line_with_and_without_python_hint() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "reviews_Books_5.json",
            "{\"reviewerID\": \"U1\", \"asin\": \"B1\", \"overall\": 5.0, \"unixReviewTime\": 1}\n",
        );
        write(
            d.path(),
            "meta_Books.json",
            "{\"asin\": \"B1\", \"title\": \"x\"}\n{\"asin\": \"B2\",\n",
        );
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(e.contains("meta_Books.json:2: not JSON ("), "{e}");
        assert!(!e.contains("Python"), "{e}");
        write(
            d.path(),
            "meta_Books.json",
            "{'asin': 'B1', 'title': 'x'}\n",
        );
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(e.contains("meta_Books.json:1: not JSON ("), "{e}");
        assert!(
            e.contains("Python literals") && e.contains("ast.literal_eval"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one-line error: {e}");
        write(d.path(), "meta_Books.json", "[1, 2]\n");
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(e.contains("meta_Books.json:1: not a JSON object"), "{e}");
    }

    #[test]
    fn directory_needs_exactly_one_reviews_file() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "meta_Books.json",
            "{\"asin\": \"B1\", \"title\": \"x\"}\n",
        );
        write(d.path(), "notes.txt", "hello\n");
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(e.contains(": no reviews file ("), "{e}");
        assert!(e.ends_with("found: meta_Books.json, notes.txt"), "{e}");
        write(d.path(), "a.json", "{}\n");
        write(d.path(), "b.jsonl.gz", "");
        let e = read_amazon(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("several reviews files (a.json, b.jsonl.gz)"),
            "{e}"
        );
        let e = read_amazon(&d.path().join("meta_Books.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a metadata file"), "{e}");
        let e = read_amazon(Path::new("/nonexistent/amazon"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/nonexistent/amazon: does not exist");
    }

    #[test]
    fn entities_decode_in_one_pass() {
        assert_eq!(
            decode_entities("a &amp;amp; b &foo; &"),
            "a &amp; b &foo; &"
        );
        assert_eq!(decode_entities("&lt;b&gt;&quot;"), "<b>\"");
        assert_eq!(decode_entities("plain"), "plain");
    }
}
