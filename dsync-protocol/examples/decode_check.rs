//! Decodes a slave (server) stream with the order check narrowed by the
//! master's stream: `decode_check MASTER.c2s SLAVE.s2c`. Prints each item.

use dsync_protocol::*;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let master = decode_all(
        &std::fs::read(&args[1]).expect("read master"),
        DecoderConfig::default(),
    )
    .expect("decode master stream");
    let h = master
        .iter()
        .find_map(|e| match e {
            OwnedEvent::Item(Item::Handshake(h)) => Some((**h).clone()),
            _ => None,
        })
        .expect("master H");
    let mut d = Decoder::new();
    d.set_session(Role::Slave, &h);
    d.feed(&std::fs::read(&args[2]).expect("read slave"));
    let mut n = 0;
    loop {
        match d.next_event() {
            Ok(Some(Event::Item(i))) => {
                n += 1;
                println!("{:?}", i.letter() as char);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    d.finish().expect("complete");
    println!("{n} items, sender finished: {}", d.sender_finished());
}
