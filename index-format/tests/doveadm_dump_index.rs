//! Every index fixture: the values `doveadm dump` printed (header, extensions,
//! keywords, records) must equal homing's dump of the same index after log replay.

mod common;

use common::index_dump::check_index_dump;
use common::{dump_files, dump_type, fixtures};

#[test]
fn every_index_dump_matches() {
    let mut files = 0;
    let mut values = 0;
    for root in ["index", "extra"] {
        for p in dump_files(&fixtures().join(root)) {
            let text = std::fs::read_to_string(&p).unwrap();
            if dump_type(&text) != Some("index") {
                continue;
            }
            values += check_index_dump(&p);
            files += 1;
        }
    }
    assert!(files >= 13, "only {files} index dumps found");
    eprintln!("{files} index dumps, {values} values compared");
}
