//! Closed sets of names: enums whose variants have one spelling each, used
//! in config files (serde), on the command line (clap `ValueEnum`, with the
//! `clap` feature), in files a run writes and in messages.
//!
//! [`named_enum!`](crate::named_enum) declares such an enum from one table
//! `Variant = "name"`, so the spellings cannot drift apart: `name()`,
//! `Display`, `FromStr`, `Serialize`, `Deserialize` and `ValueEnum` all read
//! that table. An unknown name is an error listing the valid ones.

use std::fmt;

/// A name outside a closed set; says which names are valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    /// The name as given.
    pub given: String,
    /// Every valid name, in declaration order.
    pub valid: &'static [&'static str],
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not one of {}",
            self.given,
            self.valid.join(", ")
        )
    }
}

impl std::error::Error for UnknownName {}

/// What the macro expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "clap")]
    pub use clap;
    pub use serde;
}

/// Declares a `Copy` enum with one name per variant (see the [module
/// docs](crate::names)):
///
/// ```
/// distillrec_data::named_enum! {
///     /// How ids are numbered.
///     pub enum Ids {
///         /// Dense ids.
///         Internal = "internal",
///         /// Ids of the source files.
///         Raw = "raw",
///     }
/// }
/// assert_eq!(Ids::Raw.name(), "raw");
/// assert_eq!("internal".parse::<Ids>().unwrap(), Ids::Internal);
/// assert_eq!(
///     "x".parse::<Ids>().unwrap_err().to_string(),
///     "'x' is not one of internal, raw"
/// );
/// ```
#[macro_export]
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $text:literal
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant
            ),+
        }

        impl $name {
            /// Every variant, in declaration order (an array, so its length
            /// is part of the type).
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];
            /// Every name, in declaration order (aligned with `ALL`).
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The one spelling of this variant (configs, flags, files, messages).
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The variant spelled `s`, if any.
            pub fn from_name(s: &str) -> ::std::option::Option<Self> {
                match s {
                    $($text => ::std::option::Option::Some($name::$variant),)+
                    _ => ::std::option::Option::None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.pad(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::names::UnknownName;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                $name::from_name(s).ok_or_else(|| $crate::names::UnknownName {
                    given: s.to_string(),
                    valid: $name::NAMES,
                })
            }
        }

        impl $crate::names::__private::serde::Serialize for $name {
            fn serialize<S>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error>
            where
                S: $crate::names::__private::serde::Serializer,
            {
                s.serialize_str(self.name())
            }
        }

        impl<'de> $crate::names::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D>(d: D) -> ::std::result::Result<Self, D::Error>
            where
                D: $crate::names::__private::serde::Deserializer<'de>,
            {
                use $crate::names::__private::serde::de;
                struct Names;
                impl de::Visitor<'_> for Names {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        write!(f, "one of {}", $name::NAMES.join(", "))
                    }
                    fn visit_str<E: de::Error>(self, s: &str) -> ::std::result::Result<$name, E> {
                        $name::from_name(s).ok_or_else(|| E::unknown_variant(s, $name::NAMES))
                    }
                }
                d.deserialize_str(Names)
            }
        }

        $crate::__named_enum_value_enum!($name);
    };
}

/// The clap `ValueEnum` impl of a [`named_enum!`]: its possible values are
/// the names.
#[cfg(feature = "clap")]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_value_enum {
    ($name:ident) => {
        impl $crate::names::__private::clap::ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                &$name::ALL
            }
            fn to_possible_value(
                &self,
            ) -> ::std::option::Option<$crate::names::__private::clap::builder::PossibleValue> {
                ::std::option::Option::Some(
                    $crate::names::__private::clap::builder::PossibleValue::new(self.name()),
                )
            }
        }
    };
}

/// Without the `clap` feature a [`named_enum!`] has no `ValueEnum` impl.
#[cfg(not(feature = "clap"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __named_enum_value_enum {
    ($name:ident) => {};
}

#[cfg(test)]
mod tests {
    crate::named_enum! {
        /// A test set.
        pub enum Colour {
            /// Red.
            Red = "red",
            /// Dark blue.
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn names_round_trip_through_every_spelling() {
        for c in Colour::ALL {
            assert_eq!(c.name().parse::<Colour>().unwrap(), c);
            assert_eq!(c.to_string(), c.name());
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.name()));
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), c);
        }
        assert_eq!(Colour::NAMES, ["red", "dark_blue"]);
        assert_eq!(format!("{:>5}|", Colour::Red), "  red|");
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let e = "DarkBlue".parse::<Colour>().unwrap_err().to_string();
        assert_eq!(e, "'DarkBlue' is not one of red, dark_blue");
        let e = serde_json::from_str::<Colour>("\"blue\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown variant `blue`, expected `red` or `dark_blue`"),
            "{e}"
        );
        let e = serde_json::from_str::<Colour>("3").unwrap_err().to_string();
        assert!(e.contains("expected one of red, dark_blue"), "{e}");
    }
}
