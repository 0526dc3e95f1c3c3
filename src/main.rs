fn main() {
    std::process::exit(cnnc::cli::run());
}
