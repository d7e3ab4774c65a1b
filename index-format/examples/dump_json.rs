//! Prints homing's JSON dump of a Dovecot index or log file.
fn main() {
    for a in std::env::args().skip(1) {
        match index_format::dump::dump(std::path::Path::new(&a), None) {
            Ok((_, v)) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(e) => eprintln!("{a}: {e}"),
        }
    }
}
