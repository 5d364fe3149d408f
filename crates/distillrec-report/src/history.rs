//! A run's `history.csv`: one row per epoch, written by students, distilled students
//! and the teacher (`epoch,train_loss,valid_hr@1,…,epoch_secs,eval_secs`, possibly
//! more columns such as `tokens_per_sec`).

use std::path::Path;

use anyhow::{bail, Result};

use crate::checks::{show, Range};

/// The parsed `history.csv` of one run.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct History {
    /// The header's column names, in file order; one of them is `epoch`.
    pub columns: Vec<String>,
    /// One row per epoch in file order, one value per column; an empty cell is `None`.
    pub rows: Vec<Vec<Option<f64>>>,
}

impl History {
    /// Reads and parses `path` (see [`History::parse`]).
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::files::read_small(path)?;
        Self::parse(&text, path)
    }

    /// Parses the text of a `history.csv`; `path` only names the file in errors.
    ///
    /// The first line is the header and must have an `epoch` column; every other
    /// non-blank line must have as many comma-separated cells as the header, each a
    /// number or empty (the epoch never empty). Errors are one line naming the file
    /// and the line number: `runs/a/history.csv:4: expected 12 cells as in the
    /// header, found 11`.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let at = |line: usize| format!("{}:{line}", path.display());
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end()));
        let Some((_, header)) = lines.next() else {
            bail!("{}: empty file, expected a header line", path.display());
        };
        let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
        let Some(epoch) = columns.iter().position(|c| c == "epoch") else {
            bail!("{}: the header has no `epoch` column", at(1));
        };
        let mut rows = Vec::new();
        for (no, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                bail!(
                    "{}: expected {} cells as in the header, found {}",
                    at(no),
                    columns.len(),
                    cells.len()
                );
            }
            let mut row = Vec::with_capacity(cells.len());
            for (cell, column) in cells.iter().zip(&columns) {
                if cell.is_empty() {
                    row.push(None);
                    continue;
                }
                match cell.parse::<f64>() {
                    Ok(v) => row.push(Some(v)),
                    Err(_) => bail!(
                        "{}: column `{column}`: {:?} is not a number",
                        at(no),
                        cell.chars().take(40).collect::<String>()
                    ),
                }
            }
            if row[epoch].is_none() {
                bail!("{}: the epoch is empty", at(no));
            }
            rows.push(row);
        }
        Ok(History { columns, rows })
    }

    /// Empties every cell outside its column's range ([`Range`]): an
    /// infinite loss, a validation hit ratio above 1. Returns one warning per
    /// such column, naming `path`, the column, the first bad value and its
    /// epoch.
    pub(crate) fn leave_out_impossible_values(&mut self, path: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        let epoch = self.columns.iter().position(|c| c == "epoch");
        for (k, column) in self.columns.iter().enumerate() {
            let range = Range::of(column);
            let mut bad = Vec::new();
            for row in &mut self.rows {
                if let Some(v) = row[k].filter(|v| !range.admits(*v)) {
                    bad.push((v, epoch.and_then(|e| row[e])));
                    row[k] = None;
                }
            }
            if let Some(&(v, at)) = bad.first() {
                let at = at.map_or(String::new(), |e| format!(" at epoch {e}"));
                let more = match bad.len() - 1 {
                    0 => String::new(),
                    n => format!(" (and {n} more)"),
                };
                warnings.push(format!(
                    "{path}: column `{column}`: {}{at}{more} is not {}; left out of the report",
                    show(v),
                    range.describe()
                ));
            }
        }
        warnings
    }

    /// `(epoch, value)` of `column` for the rows where it is a finite number, in file
    /// order; `None` when there is no such column.
    pub fn series(&self, column: &str) -> Option<Vec<(f64, f64)>> {
        let epoch = self.columns.iter().position(|c| c == "epoch")?;
        let k = self.columns.iter().position(|c| c == column)?;
        Some(
            self.rows
                .iter()
                .filter_map(|r| Some((r[epoch]?, r[k].filter(|v| v.is_finite())?)))
                .collect(),
        )
    }

    /// The validation curve of `metric` (column `valid_<metric>`), see
    /// [`History::series`].
    pub fn valid(&self, metric: &str) -> Option<Vec<(f64, f64)>> {
        self.series(&format!("valid_{metric}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cells_and_reads_a_validation_curve() {
        let text = "epoch,train_loss,valid_ndcg@10,epoch_secs\n\
                    1,6.0,0.25,2.5\n\
                    2,,0.5,NaN\n\
                    \n\
                    3,5.0,0.75,1.5\n";
        let h = History::parse(text, Path::new("h.csv")).unwrap();
        assert_eq!(h.columns.len(), 4);
        assert_eq!(h.rows.len(), 3);
        assert_eq!(h.rows[1][1], None);
        assert_eq!(
            h.valid("ndcg@10").unwrap(),
            [(1.0, 0.25), (2.0, 0.5), (3.0, 0.75)]
        );
        // NaN is a number but not a point of a curve
        assert_eq!(h.series("epoch_secs").unwrap(), [(1.0, 2.5), (3.0, 1.5)]);
        assert_eq!(h.valid("hr@10"), None);
    }

    #[test]
    fn impossible_values_are_emptied_with_one_warning_per_column() {
        let text = "epoch,train_loss,valid_ndcg@10\n1,inf,0.25\n2,6.0,1e308\n3,-1,-0.5\n";
        let mut h = History::parse(text, Path::new("h.csv")).unwrap();
        let w = h.leave_out_impossible_values("runs/a/history.csv");
        assert_eq!(
            w,
            [
                "runs/a/history.csv: column `train_loss`: inf at epoch 1 (and 1 more) is not finite and at least 0; left out of the report",
                "runs/a/history.csv: column `valid_ndcg@10`: 1e308 at epoch 2 (and 1 more) is not in [0, 1]; left out of the report",
            ]
        );
        assert_eq!(h.series("train_loss").unwrap(), [(2.0, 6.0)]);
        assert_eq!(h.valid("ndcg@10").unwrap(), [(1.0, 0.25)]);
    }

    #[test]
    fn malformed_files_give_one_line_errors_naming_file_and_line() {
        let p = Path::new("runs/a/history.csv");
        let cases = [
            (
                "epoch,valid_hr@10\n1,0.5\n2,0.6,7\n",
                "runs/a/history.csv:3: expected 2 cells as in the header, found 3",
            ),
            (
                "epoch,valid_hr@10\n1,0.5\n\n2,abc\n",
                "runs/a/history.csv:4: column `valid_hr@10`: \"abc\" is not a number",
            ),
            (
                "step,valid_hr@10\n1,0.5\n",
                "runs/a/history.csv:1: the header has no `epoch` column",
            ),
            ("", "runs/a/history.csv: empty file"),
            (
                "epoch,valid_hr@10\n,0.5\n",
                "runs/a/history.csv:2: the epoch is empty",
            ),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", History::parse(text, p).unwrap_err());
            assert!(e.starts_with(want), "{e:?} should start with {want:?}");
            assert!(!e.contains('\n'), "{e:?} is not one line");
        }
    }
}
