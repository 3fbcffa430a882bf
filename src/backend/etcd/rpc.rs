//! dlock's own etcd v3 gRPC client: the few messages it uses, written by
//! hand (`messages.rs`), sent with tonic and prost (`client.rs`). A client
//! crate would compile etcd's .proto files at build time, which needs
//! protoc; this needs nothing but Rust.
//!
//! Below: the constructors the backend builds its requests with.

mod client;
mod messages;

pub use client::{Client, Error, Keeper, Settings};
pub use messages::*;

/// The end of the range of every key that starts with `key`: `key` with
/// its last byte below 0xff raised by one (and what follows it dropped);
/// `\0`, every key, when there is no such byte.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Compare {
    fn revision(key: impl Into<Vec<u8>>, result: CompareResult, target: TargetUnion) -> Compare {
        let kind = match target {
            TargetUnion::CreateRevision(_) => CompareTarget::Create,
            TargetUnion::ModRevision(_) => CompareTarget::Mod,
        };
        Compare {
            result: result as i32,
            target: kind as i32,
            key: key.into(),
            target_union: Some(target),
            range_end: Vec::new(),
        }
    }

    /// The key's create revision (0: no such key) against `rev`.
    pub fn created(key: impl Into<Vec<u8>>, result: CompareResult, rev: i64) -> Compare {
        Compare::revision(key, result, TargetUnion::CreateRevision(rev))
    }

    /// The key's last modification's revision against `rev`.
    pub fn modified(key: impl Into<Vec<u8>>, result: CompareResult, rev: i64) -> Compare {
        Compare::revision(key, result, TargetUnion::ModRevision(rev))
    }

    /// Compares every key under the key as a prefix (none: as a missing key).
    pub fn with_prefix(mut self) -> Compare {
        self.range_end = prefix_end(&self.key);
        self
    }
}

impl RangeRequest {
    /// One key.
    pub fn key(key: impl Into<Vec<u8>>) -> RangeRequest {
        RangeRequest {
            key: key.into(),
            range_end: Vec::new(),
            sort_order: SortOrder::None as i32,
            sort_target: SortTarget::Key as i32,
        }
    }

    /// Every key under `prefix`, oldest first (by create revision).
    pub fn prefix_by_create(prefix: impl Into<Vec<u8>>) -> RangeRequest {
        let mut r = RangeRequest::key(prefix);
        r.range_end = prefix_end(&r.key);
        (r.sort_order, r.sort_target) = (SortOrder::Ascend as i32, SortTarget::Create as i32);
        r
    }
}

impl RequestOp {
    pub fn range(r: RangeRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::Range(r)),
        }
    }

    /// A put of `key` under `lease` (0: none).
    pub fn put(key: impl Into<Vec<u8>>, value: Vec<u8>, lease: i64) -> RequestOp {
        RequestOp {
            request: Some(Request::Put(PutRequest {
                key: key.into(),
                value,
                lease,
            })),
        }
    }

    /// A delete of `key`; with `prev_kv` the answer carries what it deleted.
    pub fn delete(key: impl Into<Vec<u8>>, prev_kv: bool) -> RequestOp {
        RequestOp {
            request: Some(Request::DeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: Vec::new(),
                prev_kv,
            })),
        }
    }
}

impl RequestOp {
    /// A transaction inside a transaction: its own compares decide among
    /// its own branches.
    pub fn txn(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(Request::Txn(Box::new(t))),
        }
    }
}

/// A transaction, built as `Txn::default().when(..).and_then(..).or_else(..)`.
pub type Txn = TxnRequest;

impl TxnRequest {
    pub fn when(mut self, c: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(c);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = RequestOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

/// The revision of the store a response was answered at.
fn revision(h: &Option<ResponseHeader>) -> i64 {
    h.as_ref().map_or(0, |h| h.revision)
}

impl RangeResponse {
    pub fn revision(&self) -> i64 {
        revision(&self.header)
    }
}

impl TxnResponse {
    pub fn revision(&self) -> i64 {
        revision(&self.header)
    }
}

impl WatchResponse {
    pub fn revision(&self) -> i64 {
        revision(&self.header)
    }
}

impl WatchCreateRequest {
    /// A watch of `key` from revision `from` on.
    pub fn key(key: impl Into<Vec<u8>>, from: i64) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.into(),
            range_end: Vec::new(),
            start_revision: from,
            filters: Vec::new(),
        }
    }

    /// Watches every key under the key as a prefix.
    pub fn with_prefix(mut self) -> Self {
        self.range_end = prefix_end(&self.key);
        self
    }

    /// Deletions only.
    pub fn deletes_only(mut self) -> Self {
        self.filters = vec![FilterType::NoPut as i32];
        self
    }
}

impl Event {
    pub fn is_delete(&self) -> bool {
        self.r#type == EventType::Delete as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_prefix_ends_past_its_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"dlock/a/"), b"dlock/a0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    /// The bytes etcd's own generated code writes for the same request
    /// (field numbers from rpc.proto; protobuf's wire format).
    #[test]
    fn a_transaction_encodes_with_etcds_field_numbers() {
        let t = Txn::default()
            .when([Compare::created("k", CompareResult::Equal, 0)])
            .and_then([RequestOp::put("k", b"v".to_vec(), 7)]);
        let bytes = t.encode_to_vec();
        // compare (1): target CREATE (2:1), key (3:"k"), create_revision (5:0).
        let compare = [0x10, 0x01, 0x1a, 0x01, b'k', 0x28, 0x00];
        // success (2): request_put (2) of key (1:"k"), value (2:"v"), lease (3:7).
        let put = [0x0a, 0x01, b'k', 0x12, 0x01, b'v', 0x18, 0x07];
        let mut want = vec![0x0a, compare.len() as u8];
        want.extend(compare);
        want.extend([0x12, put.len() as u8 + 2, 0x12, put.len() as u8]);
        want.extend(put);
        assert_eq!(bytes, want);
    }

    /// A transaction nested in another is field 4 of RequestOp and of
    /// ResponseOp (`request_txn`, `response_txn` in rpc.proto).
    #[test]
    fn a_nested_transaction_is_field_4_both_ways() {
        let inner = Txn::default().and_then([RequestOp::put("k", Vec::new(), 0)]);
        let op = RequestOp::txn(inner.clone());
        let bytes = op.encode_to_vec();
        assert_eq!(bytes[0], 4 << 3 | 2);
        assert_eq!(&bytes[2..], inner.encode_to_vec().as_slice());
        let answer = ResponseOp {
            response: Some(Response::Txn(Box::new(TxnResponse {
                succeeded: true,
                ..Default::default()
            }))),
        };
        let back = ResponseOp::decode(answer.encode_to_vec().as_slice()).unwrap();
        assert!(matches!(back.response, Some(Response::Txn(t)) if t.succeeded));
    }

    #[test]
    fn a_watch_response_decodes_its_events() {
        let r = WatchResponse {
            header: Some(ResponseHeader { revision: 9 }),
            created: false,
            canceled: false,
            compact_revision: 0,
            cancel_reason: String::new(),
            events: vec![Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: b"k".to_vec(),
                    mod_revision: 9,
                    ..Default::default()
                }),
            }],
        };
        let back = WatchResponse::decode(r.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.revision(), 9);
        assert!(back.events[0].is_delete());
        assert_eq!(back.events[0].kv.as_ref().unwrap().key, b"k");
    }
}
