//! Step lines for xtask's long tasks: `xtask [2/5] building lb (release)
//! (0:42 so far)`, on stderr, so a reader of a slow step (a toolchain
//! install, a release build, a bench run) sees where it is and for how long.

use std::time::Instant;

/// A task of `total` steps, started now.
pub struct Steps {
    total: usize,
    done: usize,
    started: Instant,
}

impl Steps {
    /// A task of `total` steps.
    pub fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Announces the next step.
    pub fn next(&mut self, what: &str) {
        self.done += 1;
        eprintln!("{}", self.line(what));
    }

    /// The line [`Steps::next`] prints.
    fn line(&self, what: &str) -> String {
        let secs = self.started.elapsed().as_secs();
        format!(
            "xtask [{}/{}] {what} ({}:{:02} so far)",
            self.done,
            self.total,
            secs / 60,
            secs % 60
        )
    }

    /// Says the task is done, with its total time.
    pub fn finish(&self, what: &str) {
        let secs = self.started.elapsed().as_secs();
        eprintln!("xtask: {what} in {}:{:02}", secs / 60, secs % 60);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_count_up_to_the_total() {
        let mut steps = Steps::new(3);
        steps.next("one");
        steps.next("two");
        assert_eq!(steps.line("two"), "xtask [2/3] two (0:00 so far)");
    }
}
