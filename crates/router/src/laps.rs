//! Where the time of one pass went, for debug logs: `Laps::lap("compile")` after each step,
//! then the whole as one field (`read=0.31ms splice=0.12ms ...`).

use std::fmt;
use std::time::{Duration, Instant};

/// Named steps of one pass and how long each took.
#[derive(Debug, Clone)]
pub struct Laps {
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Default for Laps {
    fn default() -> Self {
        Laps::start()
    }
}

impl Laps {
    /// Starts timing now.
    pub fn start() -> Laps {
        Laps {
            last: Instant::now(),
            steps: Vec::with_capacity(12),
        }
    }

    /// Ends the step `name` now (a name used again adds to its step).
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        match self.steps.iter_mut().find(|(n, _)| *n == name) {
            Some((_, d)) => *d += took,
            None => self.steps.push((name, took)),
        }
    }

    /// The steps so far, in order.
    pub fn steps(&self) -> &[(&'static str, Duration)] {
        &self.steps
    }
}

impl fmt::Display for Laps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, d)) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={:.2}ms", d.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_their_order_and_a_repeated_name_adds_up() {
        let mut l = Laps::start();
        l.lap("read");
        l.lap("parse");
        l.lap("read");
        let names: Vec<&str> = l.steps().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["read", "parse"]);
        let shown = l.to_string();
        assert!(
            shown.starts_with("read=") && shown.contains(" parse="),
            "{shown}"
        );
        assert!(shown.ends_with("ms"), "{shown}");
    }
}
