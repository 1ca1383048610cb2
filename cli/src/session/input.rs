//! Where `chat`'s lines come from, and where what it shows goes.
//!
//! - A pipe or a file: read a line at a time on a thread of its own, each
//!   line one message; messages go to stdout, everything else to stderr.
//! - A terminal (stdin and stdout both): a line editor. What arrives is
//!   printed above the line being typed, which stays whole; a line ending
//!   in `\` goes on on the next one, so one message can have several lines.
//!   The terminal's settings are put back as they were when `chat` ends.

use std::{
    io::{self, BufRead, IsTerminal, Write},
    sync::{Mutex, OnceLock},
};

use rustyline::{config::Configurer, error::ReadlineError, DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

type Printer = Box<dyn ExternalPrinter + Send>;

/// Set while a line editor owns the terminal: everything shown goes
/// through it, so it can redraw the line being typed below.
static PRINTER: OnceLock<Mutex<Printer>> = OnceLock::new();
/// The terminal's settings before the editor changed them.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Starts reading stdin on a thread of its own (a blocking read cannot be
/// cancelled, and must not hold the runtime up at exit). The channel closes
/// at the end of input; the bounded channel is the back-pressure.
pub fn start(tx: mpsc::Sender<String>, prompt: String) {
    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        match editor() {
            Ok((editor, printer)) => {
                let _ = PRINTER.set(Mutex::new(printer));
                std::thread::spawn(move || edit(editor, &prompt, &tx));
                return;
            }
            Err(e) => eprintln!("no line editor ({e}): lines are read as typed"),
        }
    }
    std::thread::spawn(move || read_lines(&tx));
}

fn editor() -> rustyline::Result<(DefaultEditor, Printer)> {
    // SAFETY: tcgetattr fills the termios it is given, or fails.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } == 0 {
        let _ = SAVED.set(saved);
    }
    let mut editor = DefaultEditor::new()?;
    // Ctrl-C stays a signal, heard by the session as from a pipe.
    editor.set_enable_signals(true);
    editor.set_auto_add_history(true);
    let printer = editor.create_external_printer()?;
    Ok((editor, Box::new(printer)))
}

/// The editor's loop: one message per line, or per run of lines joined by
/// a trailing `\`. Ctrl-D ends the input.
fn edit(mut editor: DefaultEditor, prompt: &str, tx: &mpsc::Sender<String>) {
    let mut message = Continued::default();
    loop {
        let shown = if message.is_open() { "… " } else { prompt };
        match editor.readline(shown) {
            Ok(line) => {
                if let Some(body) = message.push(&line) {
                    if tx.blocking_send(body).is_err() {
                        return;
                    }
                }
            }
            // Ctrl-C with signals on is not seen here; an editor that
            // reports it anyway ends the input.
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => return,
            Err(e) => {
                note(&format!("cannot read the terminal: {e}"));
                return;
            }
        }
    }
}

fn read_lines(tx: &mpsc::Sender<String>) {
    let mut stdin = io::stdin().lock();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match stdin.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        if tx.blocking_send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
            return;
        }
    }
}

/// Lines typed at a terminal, joined into one message while each ends in `\`.
#[derive(Debug, Default)]
pub struct Continued {
    lines: Vec<String>,
}

impl Continued {
    /// Whether the message so far waits for another line.
    pub fn is_open(&self) -> bool {
        !self.lines.is_empty()
    }

    /// A typed line: the whole message once a line does not end in `\`.
    pub fn push(&mut self, line: &str) -> Option<String> {
        match line.strip_suffix('\\') {
            Some(head) => {
                self.lines.push(head.to_owned());
                None
            }
            None => {
                self.lines.push(line.to_owned());
                Some(std::mem::take(&mut self.lines).join("\n"))
            }
        }
    }
}

/// A message, on stdout (through the editor on a terminal), at once.
pub fn show(line: &str) -> io::Result<()> {
    if let Some(printer) = PRINTER.get() {
        let mut printer = printer.lock().unwrap_or_else(|e| e.into_inner());
        return printer.print(format!("{line}\n")).map_err(io::Error::other);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Presence and everything else about the connection: stderr, or above the
/// line being typed on a terminal.
pub fn note(text: &str) {
    if let Some(printer) = PRINTER.get() {
        let mut printer = printer.lock().unwrap_or_else(|e| e.into_inner());
        if printer.print(format!("{text}\n")).is_ok() {
            return;
        }
    }
    eprintln!("{text}");
}

/// Gives the terminal back as it was, the editor's thread being stuck in
/// a read that nothing cancels; the shell's prompt starts on a line of its
/// own.
pub fn finish() {
    if let Some(saved) = SAVED.get() {
        // SAFETY: tcsetattr reads the termios it is given.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_backslash_goes_on_on_the_next_line() {
        let mut m = Continued::default();
        assert_eq!(m.push("one line"), Some("one line".into()));
        assert!(!m.is_open());
        assert_eq!(m.push("first\\"), None);
        assert!(m.is_open());
        assert_eq!(m.push("  second\\"), None);
        assert_eq!(m.push("third"), Some("first\n  second\nthird".into()));
        assert!(!m.is_open());
        assert_eq!(m.push("a \\ inside"), Some("a \\ inside".into()), "only at the end");
    }
}
