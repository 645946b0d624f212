fn main() {
    let path = std::env::args().nth(1).unwrap();
    let src = std::fs::read_to_string(&path).unwrap();
    match jpu_isa::jasm::assemble(&src) {
        Ok(p) => {
            let text = jpu_isa::jasm::disassemble(&p);
            print!("{text}");
            let bytes = jpu_isa::jbin::write(&p);
            let back = jpu_isa::jbin::read(&bytes).unwrap();
            assert_eq!(back, p);
            eprintln!("{} bytes", bytes.len());
        }
        Err(errs) => print!("{}", jpu_isa::jasm::render_errors(&path, &src, &errs)),
    }
}
