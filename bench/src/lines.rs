//! Line-oriented talk between the driver and its child programs: children
//! print one event per line on standard output, flushed at once, and take
//! commands one per line on standard input.

use std::io::Write as _;
use std::sync::mpsc;

/// A handle that prints whole lines to standard output from any task,
/// each flushed as soon as it is written.
#[derive(Clone, Debug)]
pub struct Printer {
    lines: mpsc::Sender<String>,
}

impl Printer {
    /// Starts the thread that owns standard output.
    pub fn stdout() -> Self {
        let (lines, receiver) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let stdout = std::io::stdout();
            for line in receiver {
                let mut out = stdout.lock();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        });
        Self { lines }
    }

    /// Prints one line. Lost silently if standard output is gone, as it
    /// is when the driver stopped listening.
    pub fn line(&self, line: impl Into<String>) {
        let _ = self.lines.send(line.into());
    }
}

/// Commands read from standard input, one per line, split into words.
pub fn commands() -> tokio::sync::mpsc::UnboundedReceiver<Vec<String>> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
            if !words.is_empty() && sender.send(words).is_err() {
                break;
            }
        }
    });
    receiver
}
