//! Phone numbers, stored in E.164 whatever format members type them in.

use super::Error;

/// Members are mostly in Japan: a number without a country code is read as Japanese.
const DEFAULT_REGION: phonenumber::country::Id = phonenumber::country::Id::JP;

/// A valid phone number in E.164 form (`+819012345678`).
#[derive(Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let raw = raw.trim();
        if raw.is_empty() || raw.len() > 32 {
            return Err(Error::invalid("phone", "is not a phone number"));
        }
        let number = phonenumber::parse(Some(DEFAULT_REGION), raw)
            .map_err(|_| Error::invalid("phone", "is not a phone number"))?;
        if !phonenumber::is_valid(&number) {
            return Err(Error::invalid("phone", "is not a valid phone number"));
        }
        // E.164 is "+", the country code and the national number, as the
        // crate writes it; its formatter would first pick a national layout
        // by regex, a quarter of a bulkload's time, only to ignore it.
        Ok(Self(format!(
            "+{}{}",
            number.country().code(),
            number.national()
        )))
    }

    /// Wraps a number already stored in E.164 form.
    pub(crate) fn from_stored(e164: String) -> Self {
        Self(e164)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Phone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        write!(f, "Phone(***{tail})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_numbers_default_to_japan() {
        assert_eq!(
            Phone::parse("090-1234-5678").unwrap().as_str(),
            "+819012345678"
        );
        assert_eq!(
            Phone::parse("03 1234 5678").unwrap().as_str(),
            "+81312345678"
        );
    }

    #[test]
    fn international_numbers_keep_their_country() {
        assert_eq!(
            Phone::parse("+1 650-253-0000").unwrap().as_str(),
            "+16502530000"
        );
    }

    #[test]
    fn rejects_invalid_numbers() {
        for bad in ["", "abc", "12", "+81 0000", &"9".repeat(40)] {
            assert!(Phone::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
