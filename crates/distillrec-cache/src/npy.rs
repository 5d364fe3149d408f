//! A small reader of NumPy `.npy` files (format versions 1, 2 and 3).
//!
//! Only what teacher outputs use is accepted: little-endian `f4`, `f8`,
//! `i4`, `i8` and `u4` arrays in C order. Anything else (Fortran order,
//! big-endian, other dtypes, object arrays) is refused with an error naming
//! the file, rather than being read into wrong numbers.

use std::path::Path;

use distillrec_data::DataError;

use crate::Result;

/// The numbers of an array, widened to one of three element types.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NpyData {
    /// From `<f4`.
    F32(Vec<f32>),
    /// From `<f8`.
    F64(Vec<f64>),
    /// From `<i4`, `<i8` or `<u4`.
    Int(Vec<i64>),
}

/// A C-order array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NpyArray {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements in C (row-major) order.
    pub data: NpyData,
}

/// One element of an array, as the callers see it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value {
    /// A floating-point element.
    Float(f64),
    /// An integer element.
    Int(i64),
}

impl NpyArray {
    /// The element at flat index `i`.
    pub fn get(&self, i: usize) -> Value {
        match &self.data {
            NpyData::F32(v) => Value::Float(v[i] as f64),
            NpyData::F64(v) => Value::Float(v[i]),
            NpyData::Int(v) => Value::Int(v[i]),
        }
    }

    /// `(rows, cols)` of a 2-D array; any other rank is an error naming the file.
    pub fn dims2(&self, path: &Path) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            [r, c] => Ok((*r, *c)),
            s => Err(DataError::file(
                path,
                format!("expected a 2-D array [rows, columns], found shape {s:?}"),
            )),
        }
    }
}

/// Reads and parses `path`.
pub(crate) fn read(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse(path, &bytes)
}

/// Parses the bytes of a `.npy` file (`path` only names it in errors).
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    let bad = |msg: String| DataError::file(path, msg);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (missing the \\x93NUMPY magic)".into()));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated .npy header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(format!(".npy format version {v} is not supported"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("truncated .npy header".into()))?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| bad("the .npy header is not text".into()))?;
    let descr = dict_value(header, "descr")
        .and_then(quoted)
        .ok_or_else(|| bad(format!("no 'descr' in the .npy header {header:?}")))?;
    let fortran = dict_value(header, "fortran_order")
        .ok_or_else(|| bad(format!("no 'fortran_order' in the .npy header {header:?}")))?;
    if fortran.starts_with("True") {
        return Err(bad(
            "Fortran-order arrays are not supported; save a C-order array (np.ascontiguousarray)"
                .into(),
        ));
    }
    if !fortran.starts_with("False") {
        return Err(bad(format!(
            "bad 'fortran_order' in the .npy header {header:?}"
        )));
    }
    let shape_text = dict_value(header, "shape")
        .ok_or_else(|| bad(format!("no 'shape' in the .npy header {header:?}")))?;
    let shape = parse_shape(shape_text)
        .ok_or_else(|| bad(format!("bad 'shape' in the .npy header {header:?}")))?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let size = match descr {
        "<f4" | "<i4" | "<u4" => 4,
        "<f8" | "<i8" => 8,
        d => {
            return Err(bad(format!(
                "dtype '{d}' is not supported (need little-endian f4, f8, i4, i8 or u4: '<f4', '<f8', '<i4', '<i8', '<u4')"
            )))
        }
    };
    let body = &bytes[end..];
    let want = count
        .checked_mul(size)
        .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if body.len() != want {
        return Err(bad(format!(
            "shape {shape:?} of {descr} needs {want} bytes of data but the file has {} (truncated or not a plain .npy array)",
            body.len()
        )));
    }
    let w4 = |c: &[u8]| [c[0], c[1], c[2], c[3]];
    let w8 = |c: &[u8]| [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
    let data = match descr {
        "<f4" => NpyData::F32(
            body.chunks_exact(4)
                .map(|c| f32::from_le_bytes(w4(c)))
                .collect(),
        ),
        "<f8" => NpyData::F64(
            body.chunks_exact(8)
                .map(|c| f64::from_le_bytes(w8(c)))
                .collect(),
        ),
        "<i4" => NpyData::Int(
            body.chunks_exact(4)
                .map(|c| i32::from_le_bytes(w4(c)) as i64)
                .collect(),
        ),
        "<u4" => NpyData::Int(
            body.chunks_exact(4)
                .map(|c| u32::from_le_bytes(w4(c)) as i64)
                .collect(),
        ),
        _ => NpyData::Int(
            body.chunks_exact(8)
                .map(|c| i64::from_le_bytes(w8(c)))
                .collect(),
        ),
    };
    Ok(NpyArray { shape, data })
}

/// The text right after `'key':` in the header dict, with leading spaces removed.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat_single = format!("'{key}'");
    let pat_double = format!("\"{key}\"");
    let at = header
        .find(&pat_single)
        .map(|i| i + pat_single.len())
        .or_else(|| header.find(&pat_double).map(|i| i + pat_double.len()))?;
    let rest = header[at..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

/// The contents of a quoted Python string at the start of `s`.
fn quoted(s: &str) -> Option<&str> {
    let q = s.chars().next()?;
    if q != '\'' && q != '"' {
        return None;
    }
    let rest = &s[1..];
    rest.find(q).map(|e| &rest[..e])
}

/// Parses a Python tuple of integers at the start of `s`: `()`, `(3,)`, `(3, 4)`.
fn parse_shape(s: &str) -> Option<Vec<usize>> {
    let inner = s.strip_prefix('(')?;
    let inner = &inner[..inner.find(')')?];
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        // numpy may write `3L` on Python 2.
        .map(|t| t.trim_end_matches('L').parse::<usize>().ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes a `.npy` v1 file (test helper; also used by the crate's other tests).
    pub(crate) fn encode(descr: &str, shape: &[usize], data: &[u8], fortran: bool) -> Vec<u8> {
        let shape_s = match shape {
            [a] => format!("({a},)"),
            s => format!(
                "({})",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_s}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    pub(crate) fn f32_npy(shape: &[usize], xs: &[f32]) -> Vec<u8> {
        let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        encode("<f4", shape, &b, false)
    }

    pub(crate) fn f64_npy(shape: &[usize], xs: &[f64]) -> Vec<u8> {
        let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        encode("<f8", shape, &b, false)
    }

    pub(crate) fn i64_npy(shape: &[usize], xs: &[i64]) -> Vec<u8> {
        let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        encode("<i8", shape, &b, false)
    }

    #[test]
    fn reads_each_dtype_and_refuses_others() {
        let p = Path::new("x.npy");
        let a = parse(p, &f32_npy(&[2, 2], &[1.0, 2.0, 3.0, 4.5])).unwrap();
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.data, NpyData::F32(vec![1.0, 2.0, 3.0, 4.5]));
        let a = parse(p, &f64_npy(&[3], &[1.0, -2.0, 0.25])).unwrap();
        assert_eq!(a.shape, vec![3]);
        assert_eq!(a.data, NpyData::F64(vec![1.0, -2.0, 0.25]));
        let a = parse(p, &i64_npy(&[1, 2], &[7, -1])).unwrap();
        assert_eq!(a.data, NpyData::Int(vec![7, -1]));
        let b: Vec<u8> = [5i32, 6].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            parse(p, &encode("<i4", &[2], &b, false)).unwrap().data,
            NpyData::Int(vec![5, 6])
        );
        let b: Vec<u8> = [u32::MAX].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            parse(p, &encode("<u4", &[1], &b, false)).unwrap().data,
            NpyData::Int(vec![u32::MAX as i64])
        );

        let e = parse(p, &encode("<f4", &[1], &[0; 4], true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.npy") && e.contains("Fortran"), "{e}");
        let e = parse(p, &encode(">f4", &[1], &[0; 4], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'>f4' is not supported"), "{e}");
        let e = parse(p, &encode("<f2", &[2], &[0; 4], false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'<f2' is not supported"), "{e}");
        let mut t = f32_npy(&[2, 2], &[1.0; 4]);
        t.truncate(t.len() - 1);
        let e = parse(p, &t).unwrap_err().to_string();
        assert!(e.contains("needs 16 bytes") && e.contains("15"), "{e}");
        let e = parse(p, b"PK\x03\x04 not numpy").unwrap_err().to_string();
        assert!(e.contains("not a .npy file"), "{e}");
    }

    #[test]
    fn reads_version_2_headers() {
        let v1 = f32_npy(&[1, 1], &[3.0]);
        let hlen = u16::from_le_bytes([v1[8], v1[9]]) as usize;
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend((hlen as u32).to_le_bytes());
        v2.extend(&v1[10..]);
        let a = parse(Path::new("v2.npy"), &v2).unwrap();
        assert_eq!(a.data, NpyData::F32(vec![3.0]));
    }
}
