//! A restricted unpickler for PyTorch state dicts (the `data.pkl` of a `torch.save` zip).
//!
//! It understands the opcodes a state dict uses (protocols 2 to 5) and exactly the globals it needs:
//! `collections.OrderedDict`, the torch tensor rebuild functions and the typed storage classes. Any other
//! global (`os.system`, `builtins.eval`, ...) is refused before anything is built, and no global is ever
//! called: the allowed ones are interpreted here. Loading a checkpoint therefore cannot run code.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleError {
    /// The pickle names a global outside the allow-list (`module.name`).
    ForbiddenGlobal(String),
    /// Anything else: truncated data, an unknown opcode, a malformed tensor description.
    Malformed(String),
}

type PResult<T> = std::result::Result<T, PickleError>;

fn malformed<T>(reason: impl Into<String>) -> PResult<T> {
    Err(PickleError::Malformed(reason.into()))
}

/// The storage classes a state dict can name (`torch.FloatStorage`, ...): the torch dtype name and the
/// element size. Whether this project can compute with the dtype is decided on lookup, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageKind {
    /// The class name, e.g. `BFloat16Storage`.
    pub class: &'static str,
    /// The torch dtype, e.g. `bfloat16`.
    pub torch_dtype: &'static str,
    /// The safetensors dtype name, e.g. `BF16`.
    pub safetensors_dtype: &'static str,
    pub elem_size: usize,
}

const STORAGE_KINDS: &[StorageKind] = &[
    StorageKind {
        class: "FloatStorage",
        torch_dtype: "float32",
        safetensors_dtype: "F32",
        elem_size: 4,
    },
    StorageKind {
        class: "HalfStorage",
        torch_dtype: "float16",
        safetensors_dtype: "F16",
        elem_size: 2,
    },
    StorageKind {
        class: "BFloat16Storage",
        torch_dtype: "bfloat16",
        safetensors_dtype: "BF16",
        elem_size: 2,
    },
    StorageKind {
        class: "DoubleStorage",
        torch_dtype: "float64",
        safetensors_dtype: "F64",
        elem_size: 8,
    },
    StorageKind {
        class: "IntStorage",
        torch_dtype: "int32",
        safetensors_dtype: "I32",
        elem_size: 4,
    },
    StorageKind {
        class: "LongStorage",
        torch_dtype: "int64",
        safetensors_dtype: "I64",
        elem_size: 8,
    },
    StorageKind {
        class: "ShortStorage",
        torch_dtype: "int16",
        safetensors_dtype: "I16",
        elem_size: 2,
    },
    StorageKind {
        class: "CharStorage",
        torch_dtype: "int8",
        safetensors_dtype: "I8",
        elem_size: 1,
    },
    StorageKind {
        class: "ByteStorage",
        torch_dtype: "uint8",
        safetensors_dtype: "U8",
        elem_size: 1,
    },
    StorageKind {
        class: "BoolStorage",
        torch_dtype: "bool",
        safetensors_dtype: "BOOL",
        elem_size: 1,
    },
];

/// The globals a state dict may name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter`, only as an argument of `_rebuild_from_type_v2`.
    TensorClass,
    Storage(StorageKind),
}

fn resolve_global(module: &str, name: &str) -> PResult<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorClass,
        ("torch", class) => match STORAGE_KINDS.iter().find(|k| k.class == class) {
            Some(kind) => Global::Storage(*kind),
            None => return Err(PickleError::ForbiddenGlobal(format!("{module}.{name}"))),
        },
        _ => return Err(PickleError::ForbiddenGlobal(format!("{module}.{name}"))),
    };
    Ok(g)
}

/// A storage named by a persistent id: `('storage', torch.XStorage, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub kind: StorageKind,
    /// The zip entry `data/{key}` holds its bytes.
    pub key: String,
    pub numel: usize,
}

/// A tensor described by `_rebuild_tensor_v2`: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// In elements.
    pub storage_offset: usize,
    pub shape: Vec<usize>,
    /// In elements.
    pub stride: Vec<usize>,
}

/// A value built by the unpickler.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    /// Booleans, floats and bytes appear in a state dict's pickle (`requires_grad`, metadata) but are never
    /// read, so their values are dropped.
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Bytes,
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// The tensors of an unpickled state dict, in file order; non-tensor values are skipped.
pub fn load_state_dict(data: &[u8]) -> PResult<Vec<(String, TensorRef)>> {
    let root = Unpickler::new(data).run()?;
    let items = match &root {
        Value::Dict(d) => d.borrow().clone(),
        other => {
            return malformed(format!(
                "the pickle holds a {}, not a state dict",
                other.kind()
            ))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (key, value) in items {
        let Value::Str(name) = key else {
            return malformed(format!("a state dict key is a {}, not a str", key.kind()));
        };
        if let Value::Tensor(t) = value {
            out.push((name.to_string(), (*t).clone()));
        }
    }
    Ok(out)
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

/// Bounds the stack, the mark stack and the memo so a hostile pickle cannot exhaust memory through them.
const MAX_ITEMS: usize = 50_000_000;

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => malformed(format!(
                "the pickle ends early (at byte {} of {}, {n} more needed)",
                self.pos,
                self.data.len()
            )),
        }
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> PResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> PResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> PResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn len_u64(&mut self) -> PResult<usize> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| malformed(format!("length {n} is too large")))
    }

    fn line(&mut self) -> PResult<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            return malformed("a text argument has no end of line");
        };
        let s = std::str::from_utf8(&rest[..nl])
            .or_else(|_| malformed("a text argument is not UTF-8"))?;
        self.pos += nl + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> PResult<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).or_else(|_| malformed("a string is not UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn push(&mut self, v: Value) -> PResult<()> {
        if self.stack.len() >= MAX_ITEMS {
            return malformed("the pickle's stack grows without bound");
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> PResult<Value> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => malformed("the pickle pops from an empty stack"),
        }
    }

    fn top(&self) -> PResult<&Value> {
        match self.stack.last() {
            Some(v) => Ok(v),
            None => malformed("the pickle reads an empty stack"),
        }
    }

    /// Pops everything above the last mark.
    fn pop_mark(&mut self) -> PResult<Vec<Value>> {
        let Some(mark) = self.marks.pop() else {
            return malformed("the pickle uses a mark it never set");
        };
        if mark > self.stack.len() {
            return malformed("the pickle's mark is above its stack");
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, idx: u32) -> PResult<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_ITEMS {
            return malformed("the pickle's memo grows without bound");
        }
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> PResult<()> {
        match self.memo.get(&idx) {
            Some(v) => {
                let v = v.clone();
                self.push(v)
            }
            None => malformed(format!("the pickle reads memo slot {idx}, which is empty")),
        }
    }

    fn run(mut self) -> PResult<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let proto = self.u8()?;
                    if proto > 5 {
                        return malformed(format!("pickle protocol {proto} is not supported"));
                    }
                }
                0x95 => {
                    // FRAME: only a length hint.
                    self.u64()?;
                }
                b'.' => return self.pop(), // STOP
                b'(' => {
                    if self.marks.len() >= MAX_ITEMS {
                        return malformed("too many marks");
                    }
                    self.marks.push(self.stack.len())
                }
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a => {
                    // LONG1: little-endian two's complement of n bytes.
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return malformed(format!("an integer of {n} bytes is too large"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v))?
                }
                b'G' => {
                    self.take(8)?;
                    self.push(Value::Float)?
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.push(v)?
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    self.take(n)?;
                    self.push(Value::Bytes)?
                }
                b'}' => self.push(Value::Dict(Rc::new(RefCell::new(Vec::new()))))?,
                b']' => self.push(Value::List(Rc::new(RefCell::new(Vec::new()))))?,
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return malformed("a tuple opcode finds too few items");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.push(Value::Dict(Rc::new(RefCell::new(pairs))))?
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => return malformed(format!("APPEND to a {}", other.kind())),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => return malformed(format!("APPENDS to a {}", other.kind())),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().push((k, v)),
                        other => return malformed(format!("SETITEM on a {}", other.kind())),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let new = pairs(items)?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().extend(new),
                        other => return malformed(format!("SETITEMS on a {}", other.kind())),
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'c' => {
                    // GLOBAL "module\nname\n": checked against the allow-list before anything else.
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(module, name)?;
                    self.push(Value::Global(g))?
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                        return malformed("STACK_GLOBAL needs two strings");
                    };
                    let g = resolve_global(module, name)?;
                    self.push(Value::Global(g))?
                }
                b'Q' => {
                    // BINPERSID: torch's storage reference.
                    let pid = self.pop()?;
                    let storage = persistent_storage(&pid)?;
                    self.push(Value::Storage(Rc::new(storage)))?
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = reduce(&func, &args)?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (its `_metadata`) or a tensor is not needed.
                    let _state = self.pop()?;
                    match self.top()? {
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => return malformed(format!("BUILD on a {}", other.kind())),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?
                }
                b'1' => {
                    self.pop_mark()?;
                }
                other => {
                    return malformed(format!(
                        "opcode 0x{other:02x} at byte {} is not one a state dict uses",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> PResult<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return malformed("a dict has an odd number of keys and values");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn as_usize(v: &Value, what: &str) -> PResult<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        Value::Int(i) => malformed(format!("{what} is {i}, expected a non-negative int")),
        other => malformed(format!("{what} is a {}, expected an int", other.kind())),
    }
}

fn usize_tuple(v: &Value, what: &str) -> PResult<Vec<usize>> {
    match v {
        Value::Tuple(items) => items.iter().map(|i| as_usize(i, what)).collect(),
        Value::List(items) => items.borrow().iter().map(|i| as_usize(i, what)).collect(),
        other => malformed(format!("{what} is a {}, expected a tuple", other.kind())),
    }
}

/// `('storage', torch.XStorage, key, location, numel)` as torch writes it.
fn persistent_storage(pid: &Value) -> PResult<StorageRef> {
    let Value::Tuple(items) = pid else {
        return malformed(format!(
            "a persistent id is a {}, expected a tuple",
            pid.kind()
        ));
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(kind)), key, _location, numel]
            if &**tag == "storage" =>
        {
            let key = match key {
                Value::Str(s) => s.to_string(),
                Value::Int(i) => i.to_string(),
                other => return malformed(format!("a storage key is a {}", other.kind())),
            };
            Ok(StorageRef {
                kind: *kind,
                key,
                numel: as_usize(numel, "a storage size")?,
            })
        }
        _ => malformed(
            "a persistent id is not ('storage', <storage class>, key, location, size) as torch writes it",
        ),
    }
}

fn reduce(func: &Value, args: &Value) -> PResult<Value> {
    let Value::Global(g) = func else {
        return malformed(format!("REDUCE calls a {}, not a global", func.kind()));
    };
    let Value::Tuple(args) = args else {
        return malformed("REDUCE arguments are not a tuple");
    };
    match g {
        Global::OrderedDict => {
            if !args.is_empty() {
                return malformed("OrderedDict() with arguments");
            }
            Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))))
        }
        Global::RebuildTensorV2 | Global::RebuildTensor => {
            // (storage, storage_offset, size, stride, ...): requires_grad, hooks and metadata are unused.
            if args.len() < 4 {
                return malformed("_rebuild_tensor with fewer than 4 arguments");
            }
            let Value::Storage(storage) = &args[0] else {
                return malformed(format!(
                    "_rebuild_tensor over a {}, not a storage",
                    args[0].kind()
                ));
            };
            let shape = usize_tuple(&args[2], "a tensor size")?;
            let stride = usize_tuple(&args[3], "a tensor stride")?;
            if shape.len() != stride.len() {
                return malformed(format!("a tensor has size {shape:?} but stride {stride:?}"));
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: (**storage).clone(),
                storage_offset: as_usize(&args[1], "a storage offset")?,
                shape,
                stride,
            })))
        }
        Global::RebuildParameter => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => malformed("_rebuild_parameter without a tensor"),
        },
        Global::RebuildFromTypeV2 => {
            // (func, type, args, state): only the plain tensor and Parameter types are accepted.
            match args.as_slice() {
                [inner @ Value::Global(
                    Global::RebuildTensorV2 | Global::RebuildTensor | Global::RebuildParameter,
                ), Value::Global(Global::TensorClass), inner_args, _state] => {
                    reduce(inner, inner_args)
                }
                _ => malformed("_rebuild_from_type_v2 with arguments a state dict never has"),
            }
        }
        Global::TensorClass | Global::Storage(_) => malformed("a class is called"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{'w': _rebuild_tensor_v2(('storage', torch.HalfStorage, '0', 'cpu', 6), 1, (2, 2), (1, 2), False,
    /// OrderedDict())}` in protocol 2, hand-assembled opcode by opcode.
    fn state_dict_pickle(global_module: &str, global_name: &str) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'(', b'X', 1, 0, 0, 0, b'w'];
        p.extend_from_slice(format!("c{global_module}\n{global_name}\n").as_bytes());
        p.extend_from_slice(b"((X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x000");
        p.extend_from_slice(b"X\x03\x00\x00\x00cpuK\x06tQ");
        p.extend_from_slice(b"K\x01K\x02K\x02\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)Rt");
        p.extend_from_slice(b"Ru.");
        p
    }

    #[test]
    fn a_hand_assembled_state_dict_yields_its_strided_tensor() {
        let tensors =
            load_state_dict(&state_dict_pickle("torch._utils", "_rebuild_tensor_v2")).unwrap();
        assert_eq!(tensors.len(), 1);
        let (name, t) = &tensors[0];
        assert_eq!(name, "w");
        assert_eq!(t.storage.kind.class, "HalfStorage");
        assert_eq!(t.storage.key, "0");
        assert_eq!(t.storage.numel, 6);
        assert_eq!(t.storage_offset, 1);
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(t.stride, vec![1, 2]);
    }

    #[test]
    fn any_global_outside_the_allow_list_is_refused_by_name() {
        for (module, name) in [("posix", "system"), ("builtins", "eval"), ("torch", "load")] {
            let err = load_state_dict(&state_dict_pickle(module, name)).unwrap_err();
            assert_eq!(
                err,
                PickleError::ForbiddenGlobal(format!("{module}.{name}"))
            );
        }
    }

    #[test]
    fn a_cut_pickle_and_an_unknown_opcode_are_malformed_not_panics() {
        let full = state_dict_pickle("torch._utils", "_rebuild_tensor_v2");
        for cut in 0..full.len() {
            assert!(matches!(
                load_state_dict(&full[..cut]),
                Err(PickleError::Malformed(_))
            ));
        }
        let err = load_state_dict(&[0x80, 2, b'i', b'.']).unwrap_err();
        assert!(
            matches!(err, PickleError::Malformed(ref m) if m.contains("0x69")),
            "{err:?}"
        );
    }

    #[test]
    fn long1_decodes_negative_and_positive_integers() {
        // LONG1 with 2 bytes 0xff 0x7f = 32767, with 1 byte 0xff = -1; packed in a tuple.
        let p = [0x80, 2, 0x8a, 2, 0xff, 0x7f, 0x8a, 1, 0xff, 0x86, b'.'];
        let v = Unpickler::new(&p).run().unwrap();
        let Value::Tuple(items) = v else {
            panic!("not a tuple")
        };
        assert!(matches!(items[0], Value::Int(32767)));
        assert!(matches!(items[1], Value::Int(-1)));
    }
}
