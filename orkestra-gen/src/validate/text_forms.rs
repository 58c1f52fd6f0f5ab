//! The text forms of `datetime`, `date`, `uuid` and `decimal` values written in a schema
//! (defaults, `one_of`, upcast `added` values), checked at generation time so the
//! generated code builds a typed value that cannot fail. Each check returns what is wrong
//! as the end of a sentence.

/// Whether every value of `ty` has exactly one text form, so the text names the value:
/// strings, integers, UUIDs (hyphenated, lower case), dates (`YYYY-MM-DD`) and enums (the
/// wire value). A stream name or a tag is that text. Not datetimes (an instant has many
/// RFC 3339 forms: offsets, fractions), decimals (`12.5`, `12.50`, `1.25e1`), floats,
/// booleans, lists, maps, JSON or structs.
pub(super) fn stable(ty: &crate::model::Ty) -> bool {
    use crate::model::Ty;
    match ty {
        Ty::String | Ty::Integer | Ty::Uuid | Ty::Date => true,
        Ty::Named(t) => t.is_enum,
        _ => false,
    }
}

/// An RFC 3339 date and time: `2024-01-01T09:30:00Z`, `2024-01-01T09:30:00.5+01:00`
/// (`T` or `t`, `Z`, `z` or an offset; seconds 00–59).
pub(super) fn datetime(text: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "must be an RFC 3339 date and time like \"2024-01-01T09:30:00Z\", found \"{text}\""
        ))
    };
    let Some((day, time)) = text.split_once(['T', 't']) else {
        return bad();
    };
    if calendar_date(day).is_none() {
        return bad();
    }
    let (clock, zone) = match time.find(['Z', 'z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => return bad(),
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let parts: Vec<&str> = hms.split(':').collect();
    let fraction_ok =
        !clock.contains('.') || (!fraction.is_empty() && fraction.len() <= 9 && digits(fraction));
    let zone_ok = matches!(zone, "Z" | "z")
        || zone
            .strip_prefix(['+', '-'])
            .and_then(|hm| hm.split_once(':'))
            .is_some_and(|(h, m)| number(h, 2, 23).is_some() && number(m, 2, 59).is_some());
    let clock_ok = parts.len() == 3
        && number(parts[0], 2, 23).is_some()
        && number(parts[1], 2, 59).is_some()
        && number(parts[2], 2, 59).is_some();
    if clock_ok && fraction_ok && zone_ok {
        Ok(())
    } else {
        bad()
    }
}

/// A calendar date: `2024-02-29`.
pub(super) fn date(text: &str) -> Result<(), String> {
    calendar_date(text)
        .map(|_| ())
        .ok_or_else(|| format!("must be a calendar date like \"2024-01-31\", found \"{text}\""))
}

/// A UUID in its hyphenated form, either case: `6f9619ff-8b86-d011-b42d-00c04fc964ff`.
/// Gives its 128 bits.
pub(super) fn uuid(text: &str) -> Result<u128, String> {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex: String = groups.concat();
    match u128::from_str_radix(&hex, 16) {
        Ok(bits) if lengths_ok && hex.chars().all(|c| c.is_ascii_hexdigit()) => Ok(bits),
        _ => Err(format!(
            "must be a UUID like \"6f9619ff-8b86-d011-b42d-00c04fc964ff\", found \"{text}\""
        )),
    }
}

/// Decimal text as the runtime's `Decimal` reads it: an optional sign, digits, an
/// optional fraction and exponent (`12.50`, `-3`, `1e-2`).
pub(super) fn decimal(text: &str) -> Result<(), String> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    if (!int.is_empty() || !frac.is_empty()) && digits(int) && digits(frac) && exponent_ok {
        Ok(())
    } else {
        Err(format!(
            "must be a decimal like \"12.50\", found \"{text}\""
        ))
    }
}

/// `YYYY-MM-DD` with a day that exists in that month: (year, month, day).
pub(super) fn calendar_date(text: &str) -> Option<(i32, u32, u32)> {
    let mut parts = text.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let year = i32::try_from(number(y, 4, 9999)?).ok()?;
    let month = number(m, 2, 12).filter(|&m| m >= 1)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let day = number(d, 2, days).filter(|&d| d >= 1)?;
    Some((year, month, day))
}

/// `text` as exactly `width` ASCII digits of a value up to `max`.
fn number(text: &str, width: usize, max: u32) -> Option<u32> {
    (text.len() == width && digits(text))
        .then(|| text.parse().ok())
        .flatten()
        .filter(|&n| n <= max)
}

fn digits(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        for ok in [
            "2024-01-01T09:30:00Z",
            "2024-02-29t23:59:59.123456789z",
            "1999-12-31T00:00:00+01:00",
            "2024-06-01T12:00:00-05:30",
        ] {
            assert_eq!(datetime(ok), Ok(()), "{ok}");
        }
        for bad in [
            "2024-01-01",
            "2024-01-01 09:30:00Z",
            "2024-01-01T25:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T09:30:00",
            "2024-01-01T09:30Z",
            "2024-01-01T09:30:00.Z",
            "2024-01-01T09:30:00+1:00",
            "yesterday",
        ] {
            assert!(datetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_uuids_decimals() {
        assert!(date("2024-02-29").is_ok());
        assert!(date("2023-02-29").is_err());
        assert!(date("2024-13-01").is_err());
        assert!(date("2024-1-01").is_err());
        assert_eq!(
            uuid("6F9619FF-8b86-d011-b42d-00c04fc964ff"),
            Ok(0x6f96_19ff_8b86_d011_b42d_00c0_4fc9_64ff)
        );
        assert!(uuid("6f9619ff8b86d011b42d00c04fc964ff").is_err());
        assert!(uuid("6f9619ff-8b86-d011-b42d-00c04fc964fg").is_err());
        assert!(uuid("+f9619ff-8b86-d011-b42d-00c04fc964ff").is_err());
        for ok in ["12.50", "-3", "+0.1", ".5", "5.", "1e-2"] {
            assert!(decimal(ok).is_ok(), "{ok}");
        }
        for bad in ["12,50", "", "-", "1e", "1.2.3", "NaN"] {
            assert!(decimal(bad).is_err(), "{bad}");
        }
    }
}
