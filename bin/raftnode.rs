fn main() {
    eprintln!("raftnode: the node binary is not built yet (see issue 4)");
    std::process::exit(2);
}
