//! The race log of `interp::run_checking_parallel`: which iteration of the running top-level
//! parallel loop read and wrote each element, so that an element one iteration writes and
//! another touches is caught (the parallelism contract of `lower::loops`).

use std::collections::HashMap;

use super::loops::BufId;

/// Which iteration of the current top-level parallel loop touched each element.
#[derive(Default)]
pub struct RaceLog {
    /// The running iteration, while inside a top-level parallel loop.
    pub iteration: Option<i64>,
    touched: HashMap<(BufId, usize), Touch>,
}

#[derive(Clone, Copy, Default)]
struct Touch {
    writer: Option<i64>,
    reader: Option<i64>,
    /// An iteration other than `reader` that read it too.
    other_reader: Option<i64>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Access {
    Read,
    Write,
}

impl RaceLog {
    /// Records an access by the running iteration; returns the other iteration it races with.
    pub fn record(&mut self, buf: BufId, index: usize, access: Access) -> Option<(i64, i64)> {
        let it = self.iteration?;
        let touch = self.touched.entry((buf, index)).or_default();
        let other = |seen: Option<i64>| seen.filter(|&s| s != it);
        let conflict = match access {
            Access::Read => other(touch.writer),
            Access::Write => other(touch.writer)
                .or(other(touch.reader))
                .or(other(touch.other_reader)),
        };
        match access {
            Access::Read => match touch.reader {
                None => touch.reader = Some(it),
                Some(r) if r != it => touch.other_reader = Some(it),
                Some(_) => {}
            },
            Access::Write => touch.writer = Some(it),
        }
        conflict.map(|c| (c, it))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_at(iteration: i64, log: &mut RaceLog) -> &mut RaceLog {
        log.iteration = Some(iteration);
        log
    }

    #[test]
    fn reads_may_be_shared_but_writes_may_not() {
        let mut log = RaceLog::default();
        let b = BufId(0);
        assert_eq!(log_at(0, &mut log).record(b, 5, Access::Read), None);
        assert_eq!(log_at(1, &mut log).record(b, 5, Access::Read), None);
        assert_eq!(log_at(1, &mut log).record(b, 6, Access::Write), None);
        assert_eq!(log_at(1, &mut log).record(b, 6, Access::Read), None);
        // Element 5 was read by iterations 0 and 1: a write by either races with the other.
        assert_eq!(
            log_at(1, &mut log).record(b, 5, Access::Write),
            Some((0, 1))
        );
        assert_eq!(log_at(0, &mut log).record(b, 6, Access::Read), Some((1, 0)));
    }

    #[test]
    fn nothing_is_recorded_outside_a_parallel_loop() {
        let mut log = RaceLog::default();
        assert_eq!(log.record(BufId(0), 0, Access::Write), None);
        assert!(log.touched.is_empty());
    }
}
