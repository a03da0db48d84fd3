//! Device IDs: SHA-256 of a device's SubjectPublicKeyInfo, shown as grouped base32.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};

/// Characters in the ungrouped base32 form of a device ID (256 bits / 5, rounded up).
pub const ID_CHARS: usize = 52;
/// Characters per group in the displayed form.
pub const GROUP: usize = 4;

/// The identity of one device: SHA-256 over the DER of its SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

/// Why a string is not a device ID (or prefix of one).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum IdError {
    #[error("device ID has {0} base32 characters, expected {ID_CHARS}")]
    Length(usize),
    #[error("device ID contains {0:?}, which is not a base32 character (A-Z, 2-7)")]
    BadChar(char),
    #[error("device ID does not decode (last character out of range)")]
    Decode,
    #[error("no device matches {0:?}")]
    NotFound(String),
    #[error("{prefix:?} matches {count} devices; type more characters")]
    Ambiguous { prefix: String, count: usize },
    #[error("empty device ID")]
    Empty,
}

impl DeviceId {
    /// The ID of the DER-encoded SubjectPublicKeyInfo `spki`.
    pub fn from_spki(spki: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, spki);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        DeviceId(out)
    }

    /// Ungrouped upper-case base32 (52 characters), the form used in environment variables.
    pub fn to_plain(&self) -> String {
        BASE32_NOPAD.encode(&self.0)
    }

    /// The first two groups (8 characters), enough for humans to tell devices apart in logs.
    pub fn short(&self) -> String {
        self.to_plain()[..GROUP * 2].to_string()
    }
}

/// Removes group separators and white space and upper-cases; checks the alphabet.
pub fn normalize(input: &str) -> Result<String, IdError> {
    let mut out = String::with_capacity(ID_CHARS);
    for c in input.chars() {
        if c == '-' || c == ' ' {
            continue;
        }
        let u = c.to_ascii_uppercase();
        if !(u.is_ascii_uppercase() || ('2'..='7').contains(&u)) {
            return Err(IdError::BadChar(c));
        }
        if out.len() > ID_CHARS {
            return Err(IdError::Length(out.len()));
        }
        out.push(u);
    }
    if out.is_empty() {
        return Err(IdError::Empty);
    }
    Ok(out)
}

impl FromStr for DeviceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() > 4 * ID_CHARS {
            return Err(IdError::Length(s.len()));
        }
        let plain = normalize(s)?;
        if plain.len() != ID_CHARS {
            return Err(IdError::Length(plain.len()));
        }
        let bytes = BASE32_NOPAD
            .decode(plain.as_bytes())
            .map_err(|_| IdError::Decode)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| IdError::Decode)?;
        let id = DeviceId(arr);
        // Reject non-canonical trailing bits so each ID has exactly one spelling.
        if id.to_plain() != plain {
            return Err(IdError::Decode);
        }
        Ok(id)
    }
}

impl fmt::Display for DeviceId {
    /// Grouped form: 13 groups of 4 characters joined by `-`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self.to_plain();
        for (i, chunk) in plain.as_bytes().chunks(GROUP).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

/// Resolves a full ID or an unambiguous prefix (grouped or not, any case) against `known`.
pub fn resolve_prefix<'a, I>(input: &str, known: I) -> Result<DeviceId, IdError>
where
    I: IntoIterator<Item = &'a DeviceId>,
{
    if let Ok(id) = input.parse::<DeviceId>() {
        return Ok(id);
    }
    if input.len() > 4 * ID_CHARS {
        return Err(IdError::Length(input.len()));
    }
    let prefix = normalize(input)?;
    let mut found: Option<DeviceId> = None;
    let mut count = 0;
    for id in known {
        if id.to_plain().starts_with(&prefix) {
            count += 1;
            found = Some(*id);
        }
    }
    match (count, found) {
        (1, Some(id)) => Ok(id),
        (0, _) | (_, None) => Err(IdError::NotFound(input.to_string())),
        (n, Some(_)) => Err(IdError::Ambiguous {
            prefix: input.to_string(),
            count: n,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_roundtrip_in_every_form() {
        let id = DeviceId::from_spki(b"some spki");
        let grouped = id.to_string();
        assert_eq!(grouped.len(), ID_CHARS + ID_CHARS / GROUP - 1);
        assert_eq!(grouped.parse::<DeviceId>().unwrap(), id);
        assert_eq!(id.to_plain().parse::<DeviceId>().unwrap(), id);
        assert_eq!(grouped.to_lowercase().parse::<DeviceId>().unwrap(), id);
    }

    #[test]
    fn bad_ids_are_refused() {
        assert_eq!("".parse::<DeviceId>(), Err(IdError::Empty));
        assert!(matches!("ABC".parse::<DeviceId>(), Err(IdError::Length(3))));
        assert!(matches!(
            "AB1".parse::<DeviceId>(),
            Err(IdError::BadChar('1'))
        ));
        let long = "A".repeat(400);
        assert!(long.parse::<DeviceId>().is_err());
        // 52 chars whose last one sets bits beyond 256: not canonical.
        let mut s = DeviceId([0; 32]).to_plain();
        s.pop();
        s.push('7');
        assert_eq!(s.parse::<DeviceId>(), Err(IdError::Decode));
    }

    #[test]
    fn prefixes_resolve_only_when_unambiguous() {
        let a = DeviceId::from_spki(b"a");
        let b = DeviceId::from_spki(b"b");
        let known = [a, b];
        let pa = &a.to_plain()[..6];
        assert_eq!(resolve_prefix(&pa.to_lowercase(), &known), Ok(a));
        let grouped_prefix = &a.to_string()[..9];
        assert_eq!(resolve_prefix(grouped_prefix, &known), Ok(a));
        assert!(matches!(resolve_prefix("", &known), Err(IdError::Empty)));
        // The empty-ish common prefix of two IDs is ambiguous.
        let common: String = a
            .to_plain()
            .chars()
            .zip(b.to_plain().chars())
            .take_while(|(x, y)| x == y)
            .map(|(x, _)| x)
            .collect();
        if !common.is_empty() {
            assert!(matches!(
                resolve_prefix(&common, &known),
                Err(IdError::Ambiguous { count: 2, .. })
            ));
        }
        let none = ["22222", "33333", "44444", "55555"]
            .into_iter()
            .find(|p| !a.to_plain().starts_with(p) && !b.to_plain().starts_with(p))
            .unwrap();
        assert!(matches!(
            resolve_prefix(none, &known),
            Err(IdError::NotFound(_))
        ));
    }
}
