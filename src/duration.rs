//! Durations as people write them, both ways: what the options accept and
//! what messages print, so that a value dlock prints can be pasted back.

use std::time::Duration;

/// Parses `500ms`, `5s`, `1.5s`, `2m`, `1h 30m`, `1h0m5s`, `2d`, `0`, and a
/// bare number of seconds (`90`, `0.5`), as `flock -w` and `timeout(1)` take.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!(
            "'{s}' is negative; durations are like 500ms, 5s, 2m, 1h"
        ));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return with_units(&format!("{s}s")).ok_or_else(|| not_a_duration(s, "bad number"));
    }
    match humantime::parse_duration(s) {
        Ok(d) => Ok(d),
        // humantime takes no fractions ("1.099s"), which format() prints.
        Err(e) => with_units(s).ok_or_else(|| not_a_duration(s, &e.to_string())),
    }
}

fn not_a_duration(s: &str, why: &str) -> String {
    format!("'{s}' is not a duration ({why}); use e.g. 500ms, 5s, 2m, 1h, or 90 for seconds")
}

/// Numbers with an optional fraction, each followed by a unit, summed:
/// "1.5s", "1m30.25s". None for anything else, or on overflow.
fn with_units(s: &str) -> Option<Duration> {
    let mut total: u128 = 0;
    let mut rest = s.trim_start();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let tail = tail.trim_start();
        let unit_len = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = unit_nanos(unit)?;
        total = total.checked_add(scaled(num, scale)?)?;
        rest = tail.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// `num` (digits, at most one '.') times `scale` nanoseconds, truncated to
/// whole nanoseconds.
fn scaled(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(scale)?;
    let mut place = scale;
    for d in frac.bytes().take(18) {
        place /= 10;
        value = value.checked_add(u128::from(d - b'0') * place)?;
    }
    Some(value)
}

fn unit_nanos(unit: &str) -> Option<u128> {
    const S: u128 = 1_000_000_000;
    Some(match unit {
        "ns" | "nsec" => 1,
        "us" | "usec" => 1_000,
        "ms" | "msec" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => S,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * S,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3600 * S,
        "d" | "day" | "days" => 86_400 * S,
        "w" | "week" | "weeks" => 7 * 86_400 * S,
        _ => return None,
    })
}

/// A duration the way people write one, to the millisecond: "850ms",
/// "1.099s", "2m", "9m59s", "1h30m", "2d3h". Never finer than milliseconds:
/// timeouts cut short to meet a renewal deadline would otherwise read
/// "732ms 996us 307ns".
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (hours, rest) = (rest / 3_600_000, rest % 3_600_000);
    let (mins, rest) = (rest / 60_000, rest % 60_000);
    let (secs, millis) = (rest / 1000, rest % 1000);
    let units = [(days, "d"), (hours, "h"), (mins, "m")];
    // Leading and trailing zero units are dropped; inner ones stay ("1h0m5s").
    let first = units
        .iter()
        .position(|&(n, _)| n > 0)
        .unwrap_or(units.len());
    let end = if secs > 0 || millis > 0 {
        units.len()
    } else {
        units.iter().rposition(|&(n, _)| n > 0).map_or(0, |i| i + 1)
    };
    let mut out: String = units[first..end.max(first)]
        .iter()
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    match (secs, millis) {
        (0, 0) => {}
        (s, 0) => out.push_str(&format!("{s}s")),
        (s, m) => {
            let frac = format!("{m:03}");
            out.push_str(&format!("{s}.{}s", frac.trim_end_matches('0')));
        }
    }
    out
}

/// A time left, written as [`format`] writes durations but only as fine as
/// people read one: milliseconds under a second, tenths under a minute,
/// seconds under an hour, then minutes ("850ms", "12.3s", "30s", "4m5s",
/// "2h10m"). Rounded down, so that a time left is never overstated.
pub fn format_left(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let step = match ms {
        0..1_000 => 1,
        1_000..60_000 => 100,
        60_000..3_600_000 => 1_000,
        _ => 60_000,
    };
    format(Duration::from_millis(ms - ms % step))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn prints_as_people_write_durations() {
        assert_eq!(format(Duration::from_nanos(732_996_307)), "732ms");
        assert_eq!(format(Duration::from_micros(400)), "0ms");
        assert_eq!(format(ms(1099)), "1.099s");
        assert_eq!(format(ms(2500)), "2.5s");
        assert_eq!(format(ms(5000)), "5s");
        assert_eq!(format(ms(120_000)), "2m");
        assert_eq!(format(ms(599_000)), "9m59s");
        assert_eq!(format(ms(90_500)), "1m30.5s");
        assert_eq!(format(ms(5_400_000)), "1h30m");
        assert_eq!(format(ms(3_605_000)), "1h0m5s");
        assert_eq!(format(ms(86_400_000)), "1d");
        assert_eq!(format(ms(183_600_000)), "2d3h");
        assert_eq!(format(ms(31_536_000_000)), "365d");
    }

    #[test]
    fn parses_units_fractions_and_bare_seconds() {
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse(" 0.5 "), Ok(ms(500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("500ms"), Ok(ms(500)));
        assert_eq!(parse("1h 30m"), Ok(ms(5_400_000)));
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse("1m30.25s"), Ok(ms(90_250)));
        assert!(parse("-5s").unwrap_err().contains("negative"));
        for bad in ["", "5 parsecs", "1..5s", ".", "1.5.5", "s", "5x"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_printed_duration_parses_back() {
        for n in [
            0,
            1,
            999,
            1000,
            1099,
            59_999,
            90_500,
            3_605_000,
            183_600_000,
        ] {
            let d = ms(n);
            assert_eq!(parse(&format(d)), Ok(d), "{}", format(d));
        }
    }

    #[test]
    fn times_left_read_well_and_parse_back() {
        assert_eq!(format_left(ms(850)), "850ms");
        assert_eq!(format_left(ms(12_340)), "12.3s");
        assert_eq!(format_left(ms(30_000)), "30s");
        assert_eq!(format_left(ms(2_000)), "2s");
        assert_eq!(format_left(ms(29_999)), "29.9s");
        assert_eq!(format_left(ms(245_900)), "4m5s");
        assert_eq!(format_left(ms(599_999)), "9m59s");
        assert_eq!(format_left(ms(7_800_000)), "2h10m");
        assert_eq!(format_left(ms(7_859_000)), "2h10m");
        for n in [0, 999, 1000, 12_340, 30_000, 245_900, 7_859_000] {
            let text = format_left(ms(n));
            let back = parse(&text).unwrap();
            assert!(back <= ms(n) && ms(n) - back < ms(60_000), "{n}: {text}");
        }
    }
}
