//! The capped log of one instance: `log` records, stdout and stderr lines.
//!
//! All three share one byte budget. Past it, writes still succeed (a guest
//! must not crash or spin because its log is full) but their bytes are
//! dropped and counted, so a log flood costs the host at most the cap.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamError, StreamResult};

use crate::outcome::{LogLevel, LogRecord, LogSource, StepLog};

/// A handle on an instance's log; clones share the same buffer.
#[derive(Debug, Clone)]
pub(crate) struct LogCapture {
    inner: Arc<Mutex<Buffer>>,
}

#[derive(Debug)]
struct Buffer {
    cap: usize,
    used: usize,
    log: StepLog,
    /// Bytes of stdout and stderr not yet ended by a newline.
    partial: [Vec<u8>; 2],
}

impl LogCapture {
    pub(crate) fn new(cap: usize) -> LogCapture {
        LogCapture {
            inner: Arc::new(Mutex::new(Buffer {
                cap,
                used: 0,
                log: StepLog::default(),
                partial: [Vec::new(), Vec::new()],
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        // A panic while holding this lock cannot leave the buffer half-updated
        // in a way that matters: it only holds text.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a message from the `log` host import.
    pub(crate) fn log(&self, level: LogLevel, message: &str) {
        self.record(LogSource::Log(level), message);
    }

    /// Records a message from the host about the step (a refused request):
    /// it shares the step's log budget, so a step cannot flood the host
    /// through refusals either.
    pub(crate) fn host(&self, message: &str) {
        self.record(LogSource::Host, message);
    }

    fn record(&self, source: LogSource, message: &str) {
        let mut buf = self.lock();
        let kept = buf.admit(message.len());
        if kept > 0 {
            let message = truncate_at_char(message, kept).to_owned();
            buf.log.records.push(LogRecord { source, message });
        }
    }

    /// A WASI stdout or stderr that writes into this log.
    pub(crate) fn stream(&self, source: LogSource) -> CapturedStream {
        let index = match source {
            LogSource::Stderr => 1,
            _ => 0,
        };
        CapturedStream {
            capture: self.clone(),
            index,
        }
    }

    fn write_stream(&self, index: usize, bytes: &[u8]) {
        let mut buf = self.lock();
        let kept = buf.admit(bytes.len());
        if kept == 0 {
            return;
        }
        let Buffer { partial, log, .. } = &mut *buf;
        let pending = &mut partial[index];
        pending.extend_from_slice(&bytes[..kept]);
        let source = if index == 0 {
            LogSource::Stdout
        } else {
            LogSource::Stderr
        };
        if let Some(last_newline) = pending.iter().rposition(|b| *b == b'\n') {
            let rest = pending.split_off(last_newline + 1);
            let complete = std::mem::replace(pending, rest);
            for line in complete[..complete.len() - 1].split(|b| *b == b'\n') {
                log.records.push(LogRecord {
                    source,
                    message: String::from_utf8_lossy(line).into_owned(),
                });
            }
        }
    }

    /// Takes the log, ending any unterminated stdout or stderr line.
    pub(crate) fn finish(&self) -> StepLog {
        let mut buf = self.lock();
        let Buffer { partial, log, .. } = &mut *buf;
        for (index, source) in [(0, LogSource::Stdout), (1, LogSource::Stderr)] {
            let pending = std::mem::take(&mut partial[index]);
            if !pending.is_empty() {
                log.records.push(LogRecord {
                    source,
                    message: String::from_utf8_lossy(&pending).into_owned(),
                });
            }
        }
        std::mem::take(log)
    }
}

impl Buffer {
    /// How many of `len` new bytes fit; the rest are counted as dropped.
    fn admit(&mut self, len: usize) -> usize {
        let kept = len.min(self.cap - self.used);
        self.used += kept;
        self.log.dropped_bytes += (len - kept) as u64;
        kept
    }
}

fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The guest's stdout or stderr, writing into a [`LogCapture`].
#[derive(Debug, Clone)]
pub(crate) struct CapturedStream {
    capture: LogCapture,
    index: usize,
}

/// The largest write a guest is offered at once; it keeps each host-side
/// copy small while the log budget does the real bounding.
const WRITE_BUDGET: usize = 64 * 1024;

impl IsTerminal for CapturedStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for CapturedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write_stream(self.index, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_BUDGET)
    }
}

#[async_trait::async_trait]
impl Pollable for CapturedStream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CapturedStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.capture.write_stream(self.index, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_is_split_into_lines_and_partial_lines_are_kept() {
        let capture = LogCapture::new(1024);
        let mut out = capture.stream(LogSource::Stdout);
        out.write(Bytes::from_static(b"one\ntw")).unwrap();
        out.write(Bytes::from_static(b"o\nthree")).unwrap();
        capture.log(LogLevel::Warn, "careful");
        let log = capture.finish();
        let lines: Vec<_> = log
            .records
            .iter()
            .map(|r| (r.source, r.message.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (LogSource::Stdout, "one"),
                (LogSource::Stdout, "two"),
                (LogSource::Log(LogLevel::Warn), "careful"),
                (LogSource::Stdout, "three"),
            ]
        );
        assert_eq!(log.dropped_bytes, 0);
    }

    #[test]
    fn a_flood_is_capped_and_counted_without_failing_writes() {
        let capture = LogCapture::new(100);
        let mut err = capture.stream(LogSource::Stderr);
        for _ in 0..1000 {
            err.write(Bytes::from(
                vec![b'x'; 99].into_iter().chain([b'\n']).collect::<Vec<_>>(),
            ))
            .unwrap();
            capture.log(LogLevel::Info, "ignored once full");
        }
        let log = capture.finish();
        let kept: usize = log.records.iter().map(|r| r.message.len() + 1).sum();
        assert!(kept <= 101, "kept {kept} bytes");
        assert_eq!(log.dropped_bytes, 1000 * 100 + 1000 * 17 - 100);
    }

    #[test]
    fn truncation_respects_utf8_boundaries() {
        let capture = LogCapture::new(3);
        capture.log(LogLevel::Info, "héllo");
        let log = capture.finish();
        assert_eq!(log.records[0].message, "hé");
    }
}
