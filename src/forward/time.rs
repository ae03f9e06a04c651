//! Event time: every encoding real clients send, and its RFC 3339 rendering.

use super::msgpack::{Cursor, Kind, Number};
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Seconds and nanoseconds since the Unix epoch, as Fluentd's EventTime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventTime {
    pub secs: u64,
    pub nanos: u32,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TimeError {
    #[error("time is a {0}, not an integer, float or EventTime")]
    Type(&'static str),
    #[error("time is negative or not finite")]
    OutOfRange,
    #[error("extension type {0} with {1} bytes is not an EventTime")]
    Ext(i8, usize),
    #[error("time value is truncated")]
    Truncated,
}

impl EventTime {
    pub fn now() -> EventTime {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        EventTime {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }

    /// Nanoseconds since the epoch (saturating far in the future).
    pub fn unix_nanos(self) -> u128 {
        u128::from(self.secs) * 1_000_000_000 + u128::from(self.nanos)
    }

    fn from_float(f: f64) -> Result<EventTime, TimeError> {
        if !f.is_finite() || f < 0.0 || f >= u64::MAX as f64 {
            return Err(TimeError::OutOfRange);
        }
        let secs = f.trunc();
        let mut nanos = ((f - secs) * 1e9).round() as u64;
        let mut secs = secs as u64;
        if nanos >= 1_000_000_000 {
            secs += 1;
            nanos -= 1_000_000_000;
        }
        Ok(EventTime {
            secs,
            nanos: nanos as u32,
        })
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC, always nine fraction digits).
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        let days = (self.secs / 86_400) as i64;
        let rem = self.secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
        use std::io::Write;
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:09}Z",
            self.nanos
        );
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Reads an event time in any form real clients send: integer seconds, EventTime
/// (ext 0, fixext8 or ext8), float seconds, or the v1.5 `[EventTime, {metadata}]`.
/// Nil and zero mean "now", as in Fluentd's in_forward.
pub fn read_time(c: &mut Cursor<'_>, buf: &[u8]) -> Result<EventTime, TimeError> {
    match c.peek_kind().map_err(|_| TimeError::Truncated)? {
        Kind::Array => {
            let n = c.array_len().map_err(|_| TimeError::Truncated)?;
            if n == 0 {
                return Err(TimeError::Type("empty array"));
            }
            if c.peek_kind().map_err(|_| TimeError::Truncated)? == Kind::Array {
                return Err(TimeError::Type("nested array"));
            }
            let t = read_time(c, buf)?;
            for _ in 1..n {
                c.skip().map_err(|_| TimeError::Truncated)?;
            }
            Ok(t)
        }
        _ => read_scalar_time(c, buf),
    }
}

fn read_scalar_time(c: &mut Cursor<'_>, buf: &[u8]) -> Result<EventTime, TimeError> {
    let t = match c.peek_kind().map_err(|_| TimeError::Truncated)? {
        Kind::Nil => {
            c.nil();
            return Ok(EventTime::now());
        }
        Kind::Int | Kind::Float => match c.number().map_err(|_| TimeError::Truncated)? {
            Number::Unsigned(s) => EventTime { secs: s, nanos: 0 },
            Number::Signed(s) => EventTime {
                secs: u64::try_from(s).map_err(|_| TimeError::OutOfRange)?,
                nanos: 0,
            },
            Number::Float(f) => EventTime::from_float(f)?,
        },
        Kind::Ext => {
            let (code, range) = c.ext().map_err(|_| TimeError::Truncated)?;
            let data = &buf[range];
            if code != 0 || data.len() != 8 {
                return Err(TimeError::Ext(code, data.len()));
            }
            EventTime {
                secs: u64::from(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
                nanos: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            }
        }
        other => return Err(TimeError::Type(other.name())),
    };
    if t.secs == 0 && t.nanos == 0 {
        return Ok(EventTime::now());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time_of(bytes: &[u8]) -> Result<EventTime, TimeError> {
        let mut c = Cursor::new(bytes);
        let t = read_time(&mut c, bytes)?;
        assert!(
            c.is_empty(),
            "time consumed {} of {} bytes",
            c.pos(),
            bytes.len()
        );
        Ok(t)
    }

    #[test]
    fn every_encoding() {
        let et = EventTime {
            secs: 1_795_640_613,
            nanos: 123_456_789,
        };
        let s = 1_795_640_613u32.to_be_bytes();
        let n = 123_456_789u32.to_be_bytes();
        let mut fixext8 = vec![0xd7, 0x00];
        fixext8.extend_from_slice(&s);
        fixext8.extend_from_slice(&n);
        assert_eq!(time_of(&fixext8), Ok(et));
        let mut ext8 = vec![0xc7, 0x08, 0x00];
        ext8.extend_from_slice(&s);
        ext8.extend_from_slice(&n);
        assert_eq!(time_of(&ext8), Ok(et));
        let mut v15 = vec![0x92];
        v15.extend_from_slice(&fixext8);
        v15.extend_from_slice(&[0x81, 0xa1, b'k', 0x01]);
        assert_eq!(time_of(&v15), Ok(et));
        let int32 = [0xd2, s[0], s[1], s[2], s[3]];
        assert_eq!(time_of(&int32).unwrap().secs, 1_795_640_613);
        let mut f64b = vec![0xcb];
        f64b.extend_from_slice(&1_700_000_000.5f64.to_bits().to_be_bytes());
        assert_eq!(
            time_of(&f64b),
            Ok(EventTime {
                secs: 1_700_000_000,
                nanos: 500_000_000
            })
        );
    }

    #[test]
    fn rejects_non_times() {
        assert_eq!(time_of(&[0xa1, b'x']), Err(TimeError::Type("string")));
        assert_eq!(time_of(&[0xff]), Err(TimeError::OutOfRange));
        assert_eq!(time_of(&[0xd4, 0x01, 0x00]), Err(TimeError::Ext(1, 1)));
    }

    #[test]
    fn rfc3339() {
        let mut out = Vec::new();
        EventTime {
            secs: 1_795_640_613,
            nanos: 5,
        }
        .write_rfc3339(&mut out);
        assert_eq!(out, b"2026-11-25T21:03:33.000000005Z");
        out.clear();
        EventTime {
            secs: 951_782_400,
            nanos: 0,
        }
        .write_rfc3339(&mut out);
        assert_eq!(out, b"2000-02-29T00:00:00.000000000Z");
    }
}
