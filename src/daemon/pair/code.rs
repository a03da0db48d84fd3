//! One-time codes: made by the window, typed on the joiner.

use super::error::{PairError, CODE_DIGITS};

/// A fresh code: `CODE_DIGITS` random decimal digits shown as `123-456`.
pub fn new_code() -> String {
    let n = rand::random::<u32>() % 10u32.pow(CODE_DIGITS as u32);
    let s = format!("{n:0width$}", width = CODE_DIGITS);
    format!("{}-{}", &s[..3], &s[3..])
}

/// The digits of a typed code (dashes and spaces allowed).
pub fn normalize_code(code: &str) -> Result<String, PairError> {
    let digits: String = code.chars().filter(|c| !matches!(c, '-' | ' ')).collect();
    if code.len() > 32 || digits.len() != CODE_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(PairError::InvalidCode);
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        for _ in 0..200 {
            let c = new_code();
            assert_eq!(c.len(), CODE_DIGITS + 1);
            assert_eq!(normalize_code(&c).unwrap().len(), CODE_DIGITS);
        }
        assert_eq!(normalize_code("123 456").unwrap(), "123456");
        assert_eq!(normalize_code("123456").unwrap(), "123456");
        for bad in [
            "12345",
            "1234567",
            "12a456",
            "",
            "１２３４５６",
            &"1".repeat(40),
        ] {
            assert!(
                matches!(normalize_code(bad), Err(PairError::InvalidCode)),
                "{bad:?}"
            );
        }
    }
}
