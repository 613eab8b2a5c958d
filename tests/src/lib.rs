//! Shared helpers for the cross-crate tests.

/// Prints a measured figure and keeps it in `target/tmp/figures/NAME.txt`, so
/// that `.ci/run` can show what the (output-capturing) test run measured.
/// `tmp` is the test's `CARGO_TARGET_TMPDIR`; use the [`figure!`] macro.
pub fn write_figure(tmp: &str, name: &str, text: &str) {
    println!("{text}");
    let dir = std::path::Path::new(tmp).join("figures");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\n"));
    }
}

/// `figure!(name, text)`: [`write_figure`] into this test target's tmp dir.
#[macro_export]
macro_rules! figure {
    ($name:expr, $text:expr $(,)?) => {
        $crate::write_figure(env!("CARGO_TARGET_TMPDIR"), $name, $text)
    };
}
