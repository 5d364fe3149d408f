//! [`CacheSource`]: where a cache's teacher outputs come from, the manifest's
//! `source` and a distilled run's `cache_source`. One string in JSON
//! (`student:<checkpoint>`, `teacher:<checkpoint>`, `files`, or any other
//! label), parsed once here so no reader strips prefixes by hand.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The prefix of a cache built from a student checkpoint.
const STUDENT: &str = "student:";
/// The prefix of a cache built from an LLM teacher checkpoint.
const TEACHER: &str = "teacher:";
/// The label of a cache imported from other recommenders' files.
const FILES: &str = "files";

/// Where a cache's teacher outputs come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheSource {
    /// `teacher from-student`: a student checkpoint (absolute path).
    Student(PathBuf),
    /// `teacher infer`: an LLM teacher checkpoint (absolute path).
    Teacher(PathBuf),
    /// `teacher from-files`: other recommenders' top-K files.
    Files,
    /// Any other label (hand-built caches, tests); kept as written.
    Other(String),
}

impl CacheSource {
    /// The checkpoint behind a student or teacher cache, `None` otherwise.
    pub fn checkpoint(&self) -> Option<&Path> {
        match self {
            CacheSource::Student(p) | CacheSource::Teacher(p) => Some(p),
            CacheSource::Files | CacheSource::Other(_) => None,
        }
    }

    /// Reads the JSON string; never fails (an unknown label is `Other`).
    pub fn parse(s: &str) -> CacheSource {
        if let Some(p) = s.strip_prefix(STUDENT) {
            CacheSource::Student(PathBuf::from(p))
        } else if let Some(p) = s.strip_prefix(TEACHER) {
            CacheSource::Teacher(PathBuf::from(p))
        } else if s == FILES {
            CacheSource::Files
        } else {
            CacheSource::Other(s.to_string())
        }
    }
}

impl fmt::Display for CacheSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheSource::Student(p) => write!(f, "{STUDENT}{}", p.display()),
            CacheSource::Teacher(p) => write!(f, "{TEACHER}{}", p.display()),
            CacheSource::Files => f.write_str(FILES),
            CacheSource::Other(s) => f.write_str(s),
        }
    }
}

impl From<&str> for CacheSource {
    fn from(s: &str) -> CacheSource {
        CacheSource::parse(s)
    }
}

impl Serialize for CacheSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CacheSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(CacheSource::parse(&String::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sources_round_trip_through_the_same_json_strings() {
        for (text, want) in [
            (
                "student:/r/checkpoints/best.safetensors",
                CacheSource::Student("/r/checkpoints/best.safetensors".into()),
            ),
            (
                "teacher:/t/checkpoints/best.safetensors",
                CacheSource::Teacher("/t/checkpoints/best.safetensors".into()),
            ),
            ("files", CacheSource::Files),
            ("random", CacheSource::Other("random".into())),
        ] {
            let json = format!("\"{text}\"");
            let got: CacheSource = serde_json::from_str(&json).unwrap();
            assert_eq!(got, want);
            assert_eq!(serde_json::to_string(&got).unwrap(), json);
            assert_eq!(got.to_string(), text);
        }
        let t = CacheSource::parse("teacher:/t/c/best.safetensors");
        assert_eq!(t.checkpoint(), Some(Path::new("/t/c/best.safetensors")));
        assert_eq!(CacheSource::Files.checkpoint(), None);
    }
}
