//! UTC calendar dates of Unix times (proleptic Gregorian), for Kerberos' GeneralizedTime and for
//! listing file times: one implementation of the days-to-civil algorithm over 400-year eras.

/// Unix seconds to (year, month, day, hour, minute, second) in UTC: the
/// days-to-civil algorithm over 400-year eras of the proleptic Gregorian
/// calendar.
pub fn civil_from_unix(secs: u64) -> (i64, u8, u8, u8, u8, u8) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, (rem / 3600) as u8, (rem % 3600 / 60) as u8, (rem % 60) as u8)
}

/// The inverse of [`civil_from_unix`].
pub fn unix_from_civil(year: i64, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_conversion_matches_known_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_from_unix(4_102_444_799), (2099, 12, 31, 23, 59, 59));
        for secs in [0u64, 951_782_400, 1_700_000_000, 1_709_164_800, 4_102_444_799] {
            let (y, mo, d, h, mi, s) = civil_from_unix(secs);
            assert_eq!(unix_from_civil(y, mo, d, h, mi, s), secs as i64);
        }
    }
}
