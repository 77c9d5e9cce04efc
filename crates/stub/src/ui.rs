//! How the stub talks to people: one-line notes and errors on stderr,
//! prefixed with the program's name.

use std::sync::OnceLock;

static PROGRAM: OnceLock<String> = OnceLock::new();

/// Sets the name used as the message prefix (the bundle's file name).
pub fn set_program(name: &str) {
    let _ = PROGRAM.set(name.to_owned());
}

/// The message prefix.
pub fn program() -> &'static str {
    PROGRAM.get().map_or("sydney-bundle", String::as_str)
}

/// Prints `PROGRAM: note: message` on stderr.
pub fn note(message: &str) {
    eprintln!("{}: note: {message}", program());
}

/// Prints `PROGRAM: error: message` on stderr.
pub fn error(message: &str) {
    eprintln!("{}: error: {message}", program());
}
