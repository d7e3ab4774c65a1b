//! Item types and their table definitions (spec §3.2).

use crate::escape;

/// The item types that have a table definition, in the order Dovecot sends
/// the definitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ItemKind {
    Handshake,
    MailboxState,
    MailboxTreeNode,
    MailboxDelete,
    Mailbox,
    Attribute,
    MailChange,
    MailRequest,
    Mail,
    Finish,
    /// `c`: only embedded in `B.cache_fields`, never a line of its own.
    CacheField,
}

pub(crate) const KIND_COUNT: usize = 11;

pub(crate) const H_KEYS: &[&str] = &[
    "hostname",
    "sync_ns_prefix",
    "sync_box",
    "sync_box_guid",
    "sync_type",
    "debug",
    "sync_visible_namespaces",
    "exclude_mailboxes",
    "send_mail_requests",
    "backup_send",
    "backup_recv",
    "lock_timeout",
    "no_mail_sync",
    "no_backup_overwrite",
    "purge_remote",
    "no_notify",
    "sync_since_timestamp",
    "sync_max_size",
    "sync_flags",
    "sync_until_timestamp",
    "virtual_all_box",
    "empty_hdr_workaround",
    "import_commit_msgs_interval",
    "hashed_headers",
    "alt_char",
];
pub(crate) const S_KEYS: &[&str] = &[
    "mailbox_guid",
    "last_uidvalidity",
    "last_common_uid",
    "last_common_modseq",
    "last_common_pvt_modseq",
    "last_messages_count",
    "changes_during_sync",
];
pub(crate) const N_KEYS: &[&str] = &[
    "name",
    "existence",
    "mailbox_guid",
    "uid_validity",
    "uid_next",
    "last_renamed_or_created",
    "subscribed",
    "last_subscription_change",
];
pub(crate) const D_KEYS: &[&str] = &[
    "hierarchy_sep",
    "escape_char",
    "mailboxes",
    "dirs",
    "unsubscribes",
];
pub(crate) const B_KEYS: &[&str] = &[
    "mailbox_guid",
    "uid_validity",
    "uid_next",
    "messages_count",
    "first_recent_uid",
    "highest_modseq",
    "highest_pvt_modseq",
    "mailbox_lost",
    "mailbox_ignore",
    "cache_fields",
    "have_guids",
    "have_save_guids",
    "have_only_guid128",
];
pub(crate) const A_KEYS: &[&str] = &[
    "type",
    "key",
    "value",
    "stream",
    "deleted",
    "last_change",
    "modseq",
];
pub(crate) const C_KEYS: &[&str] = &[
    "type",
    "uid",
    "guid",
    "hdr_hash",
    "modseq",
    "pvt_modseq",
    "add_flags",
    "remove_flags",
    "final_flags",
    "keywords_reset",
    "keyword_changes",
    "received_timestamp",
    "virtual_size",
];
pub(crate) const R_KEYS: &[&str] = &["guid", "uid"];
pub(crate) const M_KEYS: &[&str] = &[
    "guid",
    "uid",
    "pop3_uidl",
    "pop3_order",
    "received_date",
    "saved_date",
    "stream",
];
pub(crate) const F_KEYS: &[&str] = &["error", "mail_error", "require_full_resync"];
pub(crate) const CF_KEYS: &[&str] = &["name", "decision", "last_used"];

impl ItemKind {
    /// All kinds in Dovecot's table order.
    pub const ALL: [ItemKind; KIND_COUNT] = [
        ItemKind::Handshake,
        ItemKind::MailboxState,
        ItemKind::MailboxTreeNode,
        ItemKind::MailboxDelete,
        ItemKind::Mailbox,
        ItemKind::Attribute,
        ItemKind::MailChange,
        ItemKind::MailRequest,
        ItemKind::Mail,
        ItemKind::Finish,
        ItemKind::CacheField,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The line's type letter.
    pub fn letter(self) -> u8 {
        match self {
            ItemKind::Handshake => b'H',
            ItemKind::MailboxState => b'S',
            ItemKind::MailboxTreeNode => b'N',
            ItemKind::MailboxDelete => b'D',
            ItemKind::Mailbox => b'B',
            ItemKind::Attribute => b'A',
            ItemKind::MailChange => b'C',
            ItemKind::MailRequest => b'R',
            ItemKind::Mail => b'M',
            ItemKind::Finish => b'F',
            ItemKind::CacheField => b'c',
        }
    }

    pub fn from_letter(b: u8) -> Option<ItemKind> {
        ItemKind::ALL.into_iter().find(|k| k.letter() == b)
    }

    /// Dovecot's name of the item (used in its error messages).
    pub fn name(self) -> &'static str {
        match self {
            ItemKind::Handshake => "handshake",
            ItemKind::MailboxState => "mailbox_state",
            ItemKind::MailboxTreeNode => "mailbox_tree_node",
            ItemKind::MailboxDelete => "mailbox_delete",
            ItemKind::Mailbox => "mailbox",
            ItemKind::Attribute => "mailbox_attribute",
            ItemKind::MailChange => "mail_change",
            ItemKind::MailRequest => "mail_request",
            ItemKind::Mail => "mail",
            ItemKind::Finish => "finish",
            ItemKind::CacheField => "mailbox_cache_field",
        }
    }

    /// Key names in the order Dovecot 2.3.19.1 declares them.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            ItemKind::Handshake => H_KEYS,
            ItemKind::MailboxState => S_KEYS,
            ItemKind::MailboxTreeNode => N_KEYS,
            ItemKind::MailboxDelete => D_KEYS,
            ItemKind::Mailbox => B_KEYS,
            ItemKind::Attribute => A_KEYS,
            ItemKind::MailChange => C_KEYS,
            ItemKind::MailRequest => R_KEYS,
            ItemKind::Mail => M_KEYS,
            ItemKind::Finish => F_KEYS,
            ItemKind::CacheField => CF_KEYS,
        }
    }

    /// Keys a table definition must declare and a data line must carry.
    pub fn required_keys(self) -> &'static [&'static str] {
        match self {
            ItemKind::Handshake => &["hostname"],
            ItemKind::MailboxState => &S_KEYS[..5],
            ItemKind::MailboxTreeNode => &N_KEYS[..2],
            ItemKind::MailboxDelete => &D_KEYS[..1],
            ItemKind::Mailbox => &B_KEYS[..7],
            ItemKind::Attribute => &A_KEYS[..2],
            ItemKind::MailChange => &C_KEYS[..2],
            ItemKind::MailRequest | ItemKind::Mail | ItemKind::Finish => &[],
            ItemKind::CacheField => &CF_KEYS[..2],
        }
    }

    /// The remote minor version from which this table is mandatory.
    pub fn min_minor(self) -> u32 {
        match self {
            ItemKind::Attribute => 1,
            ItemKind::Finish => 3,
            _ => 0,
        }
    }

    /// Whether the item can carry a data block (`stream` key).
    pub fn has_stream(self) -> bool {
        matches!(self, ItemKind::Attribute | ItemKind::Mail)
    }
}

/// One table definition line: the letter and the key names in wire order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDef {
    pub letter: u8,
    pub keys: Vec<Vec<u8>>,
}

/// The table block one side sent (or will send): every definition line in
/// order, including ones this implementation does not know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tables {
    pub defs: Vec<TableDef>,
}

impl Default for Tables {
    fn default() -> Self {
        Tables::standard()
    }
}

impl Tables {
    /// The exact block Dovecot 2.3.19.1 sends.
    pub fn standard() -> Tables {
        Tables {
            defs: ItemKind::ALL
                .iter()
                .map(|k| TableDef {
                    letter: k.letter(),
                    keys: k.keys().iter().map(|s| s.as_bytes().to_vec()).collect(),
                })
                .collect(),
        }
    }

    /// The effective definition for a kind (the last line with its letter).
    pub fn get(&self, kind: ItemKind) -> Option<&TableDef> {
        self.defs.iter().rev().find(|d| d.letter == kind.letter())
    }

    /// Appends the definition lines and the terminating `.` line.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for d in &self.defs {
            out.push(d.letter);
            for (i, k) in d.keys.iter().enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                escape::escape_into(k, out);
            }
            out.push(b'\n');
        }
        out.extend_from_slice(b".\n");
    }
}

/// Per kind: for each of our standard keys, the position in the sender's
/// table (decode side), and for each wire position, our standard key index
/// (encode side).
#[derive(Clone, Debug)]
pub(crate) struct KeyMaps {
    /// `[kind][std key] -> wire position`
    pub decode: Vec<Vec<Option<usize>>>,
    /// `[kind][wire position] -> std key`
    pub encode: Vec<Vec<Option<usize>>>,
    pub defined: [bool; KIND_COUNT],
}

impl KeyMaps {
    pub fn from_tables(t: &Tables) -> KeyMaps {
        let mut decode = Vec::with_capacity(KIND_COUNT);
        let mut encode = Vec::with_capacity(KIND_COUNT);
        let mut defined = [false; KIND_COUNT];
        for kind in ItemKind::ALL {
            let std = kind.keys();
            match t.get(kind) {
                Some(def) => {
                    defined[kind.index()] = true;
                    decode.push(
                        std.iter()
                            .map(|k| def.keys.iter().position(|w| w == k.as_bytes()))
                            .collect(),
                    );
                    encode.push(
                        def.keys
                            .iter()
                            .map(|w| std.iter().position(|k| k.as_bytes() == w.as_slice()))
                            .collect(),
                    );
                }
                None => {
                    decode.push(vec![None; std.len()]);
                    encode.push(Vec::new());
                }
            }
        }
        KeyMaps {
            decode,
            encode,
            defined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_block_matches_capture_bytes() {
        let mut out = b"VERSION\tdsync\t3\t5\n".to_vec();
        Tables::standard().encode_into(&mut out);
        // 1203 bytes including the VERSION line, as in §3.2.
        assert_eq!(out.len(), 1203);
        let cap = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/captures/01-first-sync.s2c"
        ))
        .unwrap();
        assert_eq!(&cap[..1203], &out[..]);
    }
}
