//! Any text: the front end either checks it (and its canonical print checks to the
//! same text) or reports diagnostics. It never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    match jalc::tir::parse_and_check(src) {
        Ok(f) => {
            let text = jalc::tir::printer::print(&f);
            let again = jalc::tir::parse_and_check(&text).expect("canonical text checks");
            assert_eq!(jalc::tir::printer::print(&again), text);
        }
        Err(d) => {
            let _ = jalc::tir::render("fuzz.tir", src, &d);
        }
    }
});
