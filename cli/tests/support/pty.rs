//! The binary on a pseudo-terminal, as a person at a keyboard runs it: its
//! stdin, stdout and stderr are the terminal (its controlling one, so
//! `/dev/tty` is it too), and the test types into the other end and reads
//! everything the terminal shows, echo included.

use std::{
    ffi::CStr,
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::WAIT;

/// The binary, running on a terminal of its own.
pub struct Terminal {
    child: Child,
    /// The terminal's other end: what is written is typed.
    master: File,
    /// Everything the terminal showed so far.
    shown: Arc<Mutex<Vec<u8>>>,
}

fn check(ret: libc::c_int, what: &str) -> std::io::Result<libc::c_int> {
    if ret < 0 {
        Err(std::io::Error::other(format!("{what}: {}", std::io::Error::last_os_error())))
    } else {
        Ok(ret)
    }
}

impl Terminal {
    /// Starts `cmd` with a new terminal as its stdin, stdout, stderr and
    /// controlling terminal.
    pub fn spawn(mut cmd: Command) -> Terminal {
        // SAFETY: plain libc calls on descriptors this function owns.
        let (master, slave) = unsafe {
            let master = check(libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY), "posix_openpt").unwrap();
            let master = OwnedFd::from_raw_fd(master);
            check(libc::grantpt(master.as_raw_fd()), "grantpt").unwrap();
            check(libc::unlockpt(master.as_raw_fd()), "unlockpt").unwrap();
            let mut name = [0 as libc::c_char; 128];
            check(libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()), "ptsname_r").unwrap();
            let path = CStr::from_ptr(name.as_ptr()).to_str().unwrap().to_owned();
            let slave: OwnedFd = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap().into();
            (master, slave)
        };
        // A terminal of a usual size, so a line editor has room.
        let size = libc::winsize { ws_row: 24, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize.
        unsafe { check(libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &size), "TIOCSWINSZ").unwrap() };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A session of its own, with this terminal (its stdin) as
                // the controlling one.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let master = File::from(master);
        let shown = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&shown);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child and every copy of its end are gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, master, shown }
    }

    /// Types `text` (a newline is Enter).
    pub fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Everything shown so far, as text.
    pub fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    /// Waits until `pred` holds of what the terminal shows, and returns it.
    pub async fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let shown = self.shown();
            if pred(&shown) {
                return shown;
            }
            assert!(Instant::now() < deadline, "the terminal never showed {what}: {shown:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the terminal shows `text`.
    pub async fn shows(&self, text: &str) -> String {
        self.until(&format!("{text:?}"), |s| s.contains(text)).await
    }

    /// Whether the terminal echoes what is typed, as the program set it.
    pub fn echoes(&self) -> bool {
        // SAFETY: tcgetattr fills the termios it is given.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        unsafe { check(libc::tcgetattr(self.master.as_raw_fd(), &mut t), "tcgetattr").unwrap() };
        t.c_lflag & libc::ECHO != 0
    }

    /// Waits until the program has turned the terminal's echo off.
    pub async fn echo_off(&self) {
        let deadline = Instant::now() + WAIT;
        while self.echoes() {
            assert!(Instant::now() < deadline, "echo was never turned off: {:?}", self.shown());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the exit: its code.
    pub async fn exit_code(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "palaver-cli did not exit; the terminal shows {:?}", self.shown());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
