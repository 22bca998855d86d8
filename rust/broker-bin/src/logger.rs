//! Log records to stderr, one line each, in the same form as the Python
//! command's (`vmnet-rs: LEVEL: message`): launchd and journald keep stderr.

use std::io::Write;

struct Stderr;

static LOGGER: Stderr = Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Warn => "warning".to_owned(),
                other => other.as_str().to_lowercase(),
            };
            let _ = writeln!(std::io::stderr().lock(), "vmnet-rs: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// 0: warnings and errors; 1 (-v): info; 2 or more (-vv): debug.
pub fn init(verbose: u8) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    });
}
