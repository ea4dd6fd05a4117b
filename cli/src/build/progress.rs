//! Build progress as events; the CLI renders them (indicatif bar on a
//! terminal, plain lines otherwise, nothing with `--json`).

/// Receives a build's progress.
pub trait Progress {
    /// A stage began (`fetching MicroPython …`, `compiling …`).
    fn note(&mut self, target: &str, message: &str);
    /// The compiler starts; about `expected_steps` step lines will follow.
    fn compile_start(&mut self, target: &str, expected_steps: u64);
    /// One line of the compiler's output.
    fn compile_line(&mut self, line: &str);
    /// The compiler finished (successfully or not).
    fn compile_end(&mut self);
}

/// Ignores everything.
pub struct Silent;

impl Progress for Silent {
    fn note(&mut self, _: &str, _: &str) {}
    fn compile_start(&mut self, _: &str, _: u64) {}
    fn compile_line(&mut self, _: &str) {}
    fn compile_end(&mut self) {}
}

/// Whether a line of MicroPython's make output is one build step
/// (`CC py/obj.c`, `MPY asyncio/core.py`, `LINK build/micropython`, …).
pub fn is_step_line(line: &str) -> bool {
    let Some((word, rest)) = line.split_once(' ') else {
        return false;
    };
    !rest.is_empty()
        && (2..=6).contains(&word.len())
        && word.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_are_make_short_verbs() {
        assert!(is_step_line("CC ../../py/obj.c"));
        assert!(is_step_line("MPY asyncio/core.py"));
        assert!(is_step_line("LINK build/micropython"));
        assert!(!is_step_line("make: Entering directory '/x'"));
        assert!(!is_step_line("mkdir -p build/genhdr"));
        assert!(!is_step_line("I"));
    }
}
