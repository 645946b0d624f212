//! Any text: the front end either checks it (and its canonical print checks to the
//! same text) or reports diagnostics. It never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    match jalc::front::tir::parse_and_check(src) {
        Ok(f) => {
            let text = jalc::ir::printer::print(&f);
            let again = jalc::front::tir::parse_and_check(&text).expect("canonical text checks");
            assert_eq!(jalc::ir::printer::print(&again), text);
        }
        Err(d) => {
            let _ = jalc::front::tir::render("fuzz.tir", src, &d);
        }
    }
});
