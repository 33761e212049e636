//! Repository hygiene: every Rust file starts with a `//!` comment saying
//! what it is for.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("");
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(files.len() > 20, "found only {} files under {}", files.len(), root.display());
    let missing: Vec<String> = files
        .iter()
        .filter(|path| !std::fs::read_to_string(path).expect("read file").starts_with("//!"))
        .map(|path| path.strip_prefix(root).unwrap_or(path).display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a leading //! comment: {missing:?}");
}
