fn main() {
    let _ = mkectl::cli::DEFAULT_DATA_DIR;
}
