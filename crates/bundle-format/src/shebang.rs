//! The one `#!` parser: the kernel's rules (`fs/binfmt_script.c`), so that
//! the stub, the doctor and portable packing all read a script's first line
//! the way `execve` will.
//!
//! The kernel reads the first [`BINPRM_BUF_SIZE`] bytes. The line ends at the
//! first newline (or NUL) in them; without one, the line is the whole buffer
//! but its last byte, and the interpreter must end (space, tab or NUL) inside
//! it, or the kernel refuses the file as truncated. Spaces and tabs (only
//! those) around the line are dropped; the interpreter ends at the first
//! space, tab or NUL; everything after the following spaces and tabs is one
//! optional argument, up to the end of the line or a NUL.

/// How many bytes of a file the kernel reads to recognise it.
pub const BINPRM_BUF_SIZE: usize = 256;

/// A parsed `#!` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shebang<'a> {
    /// The interpreter's path, as written.
    pub interpreter: &'a [u8],
    /// The one optional argument (possibly empty, as the kernel passes it).
    pub argument: Option<&'a [u8]>,
}

fn spacetab(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Up to the first NUL, as the kernel reads a C string.
fn c_str(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
}

/// Parses the `#!` line at the start of `head` (the file's first bytes; any
/// past [`BINPRM_BUF_SIZE`] are ignored). `None` where the kernel would not
/// run the file as a script.
pub fn parse(head: &[u8]) -> Option<Shebang<'_>> {
    let buf = &head[..head.len().min(BINPRM_BUF_SIZE)];
    if !buf.starts_with(b"#!") {
        return None;
    }
    let line = match buf.iter().position(|&b| b == b'\n' || b == 0) {
        Some(end) if buf[end] == b'\n' => trim_end(&buf[2..end]),
        _ => {
            // No newline: the kernel reads bytes 2..255 of its buffer, which
            // is zero-filled past the end of a short file.
            let window = &buf[2..buf.len().min(BINPRM_BUF_SIZE - 1)];
            if buf.len() < BINPRM_BUF_SIZE - 1 || window.contains(&0) {
                // A C string: nothing after the NUL is trimmed away.
                c_str(window)
            } else {
                let start = window.iter().position(|&b| !spacetab(b))?;
                if !window[start..].iter().copied().any(spacetab) {
                    return None; // the interpreter's name may be cut short
                }
                trim_end(window)
            }
        }
    };
    let line = &line[line.iter().position(|&b| !spacetab(b))?..];
    let (interpreter, argument) = match line.iter().position(|&b| spacetab(b)) {
        Some(sep) => {
            let rest = &line[sep..];
            let at = rest
                .iter()
                .position(|&b| !spacetab(b))
                .unwrap_or(rest.len());
            (&line[..sep], Some(&rest[at..]))
        }
        None => (line, None),
    };
    Some(Shebang {
        interpreter,
        argument,
    })
}

fn trim_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., last] = line {
        if !spacetab(*last) {
            break;
        }
        line = rest;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
        parse(head).map(|s| (s.interpreter, s.argument))
    }

    #[test]
    fn interpreter_and_one_argument() {
        assert_eq!(parsed(b"#!/bin/sh\necho"), Some((&b"/bin/sh"[..], None)));
        assert_eq!(
            parsed(b"#! /usr/bin/env  bash -e \nx"),
            Some((&b"/usr/bin/env"[..], Some(&b"bash -e"[..])))
        );
        assert_eq!(
            parsed(b"#!\t/bin/sh\t-e\t\n"),
            Some((&b"/bin/sh"[..], Some(&b"-e"[..])))
        );
    }

    #[test]
    fn only_spaces_and_tabs_are_blanks() {
        // A DOS line ending is part of the interpreter's name, as for execve.
        assert_eq!(parsed(b"#!/bin/sh\r\n"), Some((&b"/bin/sh\r"[..], None)));
        assert_eq!(
            parsed(b"#!/bin/sh -e\r\n"),
            Some((&b"/bin/sh"[..], Some(&b"-e\r"[..])))
        );
    }

    #[test]
    fn not_scripts() {
        assert_eq!(parsed(b"#!\n"), None);
        assert_eq!(parsed(b"#!  \t \n"), None);
        assert_eq!(parsed(b"#!"), None);
        assert_eq!(parsed(b"\x7fELF"), None);
        assert_eq!(parsed(b"# !/bin/sh\n"), None);
        assert_eq!(parsed(b""), None);
    }

    #[test]
    fn the_line_may_end_at_the_end_of_a_short_file() {
        assert_eq!(parsed(b"#!/bin/sh"), Some((&b"/bin/sh"[..], None)));
        assert_eq!(
            parsed(b"#!/bin/sh -e"),
            Some((&b"/bin/sh"[..], Some(&b"-e"[..])))
        );
        // There the line is a C string in a zero-filled buffer: its
        // trailing blanks stay, as the kernel passes them.
        assert_eq!(
            parsed(b"#!/bin/sh -e "),
            Some((&b"/bin/sh"[..], Some(&b"-e "[..])))
        );
        assert_eq!(
            parsed(b"#!/bin/sh  "),
            Some((&b"/bin/sh"[..], Some(&b""[..])))
        );
    }

    #[test]
    fn a_nul_ends_the_line() {
        assert_eq!(parsed(b"#!/bin/sh\0 -e\n"), Some((&b"/bin/sh"[..], None)));
        assert_eq!(
            parsed(b"#!/bin/sh -e\0x\n"),
            Some((&b"/bin/sh"[..], Some(&b"-e"[..])))
        );
    }

    #[test]
    fn only_the_first_buffer_counts() {
        // The newline is past the buffer, but the interpreter ends inside
        // it: the kernel runs it with the argument cut at 255 bytes.
        let mut long = b"#!/bin/sh ".to_vec();
        long.resize(400, b'a');
        long.push(b'\n');
        let (interpreter, argument) = parsed(&long).unwrap();
        assert_eq!(interpreter, b"/bin/sh");
        assert_eq!(
            argument.unwrap().len(),
            BINPRM_BUF_SIZE - 1 - b"#!/bin/sh ".len()
        );
        // An interpreter that does not end inside the buffer is refused.
        let mut long = b"#!/".to_vec();
        long.resize(400, b'a');
        long.push(b'\n');
        assert_eq!(parsed(&long), None);
        // A newline at the buffer's last byte still ends the line.
        let mut edge = b"#!/bin/sh ".to_vec();
        edge.resize(BINPRM_BUF_SIZE - 1, b'a');
        edge.push(b'\n');
        assert_eq!(parsed(&edge).unwrap().1.unwrap().len(), 245);
    }
}
