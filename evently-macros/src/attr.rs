//! Parsing of the helper attributes `#[event(...)]`, `#[command(...)]`,
//! `#[aggregate(...)]` and `#[projection(...)]` into plain values, and of the `#[serde(...)]` keys
//! the `Event` derive has to know about. A malformed key is recorded in
//! [`Errors`] and parsing goes on with the next key, so one build reports
//! every mistake in an attribute.

use proc_macro2::TokenTree;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::ParseStream;
use syn::{Attribute, Ident, Lit, LitInt, LitStr, Path, Token, Type};

use crate::ast::method_for;
use crate::ctxt::Errors;

/// Where an `#[event(...)]` attribute sits: each place allows other keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventPlace {
    /// On an event enum: only `version`, which its variants inherit.
    Enum,
    /// On a variant of an event enum: `name` and `version`.
    Variant,
    /// On an event struct: `name` and `version`.
    Struct,
}

/// The keys of the `#[event(...)]` attributes of one enum, variant or struct.
#[derive(Default)]
pub(crate) struct EventAttrs {
    /// `name = "..."`: the stored event type name.
    pub name: Option<LitStr>,
    /// `version = N`: the schema version.
    pub version: Option<Version>,
    /// `upcaster = path::to::function`: upgrades older stored events.
    pub upcaster: Option<Path>,
}

/// A `version = N` value, with its literal for error spans.
pub(crate) struct Version {
    pub value: u32,
    pub lit: LitInt,
}

/// Reads the `#[event(...)]` attributes found at `place`.
pub(crate) fn event_attrs(cx: &mut Errors, attrs: &[Attribute], place: EventPlace) -> EventAttrs {
    let mut out = EventAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("event")) {
        let _ = parse_keys(cx, attr, |meta| {
            if meta.path.is_ident("version") {
                let version = version_value(meta)?;
                set_once(&mut out.version, version, meta, "event")
            } else if meta.path.is_ident("upcaster") {
                if place == EventPlace::Variant {
                    return Err(meta.error(
                        "`upcaster` goes on the enum, not on a variant: one function upgrades \
                         every old event of the type",
                    ));
                }
                let upcaster = path_value(meta)?;
                set_once(&mut out.upcaster, upcaster, meta, "event")
            } else if meta.path.is_ident("name") {
                let name = string_value(meta, r#"name = "account.opened""#)?;
                if place == EventPlace::Enum {
                    return Err(meta.error(
                        "`name` goes on a variant, not on the enum: each variant is its own \
                         event type, named with `#[event(name = \"...\")]`",
                    ));
                }
                set_once(&mut out.name, name, meta, "event")
            } else {
                let expected = match place {
                    EventPlace::Enum => "`version` or `upcaster`",
                    EventPlace::Variant => "`name` or `version`",
                    EventPlace::Struct => "`name`, `version` or `upcaster`",
                };
                Err(unknown_key(meta, "event", expected))
            }
        });
    }
    out
}

/// Reports `#[<name>(...)]` attributes on fields, which take none.
pub(crate) fn reject_on_field(cx: &mut Errors, attrs: &[Attribute], name: &str, goes_on: &str) {
    for attr in attrs.iter().filter(|attr| attr.path().is_ident(name)) {
        cx.error_spanned_by(
            attr,
            format!("`#[{name}(...)]` goes on {goes_on}, not on a field"),
        );
    }
}

/// Where a `#[command(...)]` attribute sits: each place allows other keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandPlace {
    /// On a command enum: no keys.
    Enum,
    /// On a variant of a command enum, or on a command struct: `name`.
    Variant,
    /// On a field: `id`.
    Field,
}

/// The keys of the `#[command(...)]` attributes of one enum, variant,
/// struct or field.
#[derive(Default)]
pub(crate) struct CommandAttrs {
    /// `name = "..."`: the command type name.
    pub name: Option<LitStr>,
    /// `id`: this field holds the aggregate id (the key, for error spans).
    pub id: Option<Path>,
    /// Whether a key was wrong (then a missing id is no news to report).
    pub wrong: bool,
}

/// Reads the `#[command(...)]` attributes found at `place`.
pub(crate) fn command_attrs(
    cx: &mut Errors,
    attrs: &[Attribute],
    place: CommandPlace,
) -> CommandAttrs {
    let mut out = CommandAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("command")) {
        out.wrong |= parse_keys(cx, attr, |meta| match place {
            CommandPlace::Field if meta.path.is_ident("id") => {
                // `id = true` still marks the field: one error is enough.
                let value = flag(meta, "command");
                set_once(&mut out.id, meta.path.clone(), meta, "command")?;
                value
            }
            CommandPlace::Field => Err(unknown_key(meta, "command", "`id`")),
            CommandPlace::Variant if meta.path.is_ident("name") => {
                let name = string_value(meta, r#"name = "open_account""#)?;
                set_once(&mut out.name, name, meta, "command")
            }
            CommandPlace::Variant if meta.path.is_ident("id") => {
                Err(meta.error("`#[command(id)]` goes on the field that holds the aggregate id"))
            }
            CommandPlace::Variant => Err(unknown_key(meta, "command", "`name`")),
            CommandPlace::Enum => Err(meta.error(
                "`#[command(...)]` takes no keys on an enum: put `name = \"...\"` on a variant \
                 and `id` on the field that holds the aggregate id",
            )),
        });
    }
    out
}

/// The keys of the `#[aggregate(...)]` attributes of a struct.
#[derive(Default)]
pub(crate) struct AggregateAttrs<'a> {
    /// The first `#[aggregate(...)]` attribute, for error spans.
    pub original: Option<&'a Attribute>,
    /// `event = Type`.
    pub event: Option<Type>,
    /// `command = Type`.
    pub command: Option<Type>,
    /// `error = Type`.
    pub error: Option<Type>,
    /// `services = Type`.
    pub services: Option<Type>,
    /// `name = "..."`: the aggregate type name.
    pub name: Option<LitStr>,
    /// `shares_event`: the event type is claimed by another aggregate, so
    /// this one does not implement `AggregateEvent` for it.
    pub shares_event: bool,
    /// The keys given, well-formed or not: a key with a bad value is not
    /// also reported missing.
    pub given: Vec<String>,
}

/// Reads the `#[aggregate(...)]` attributes of a struct.
pub(crate) fn aggregate_attrs<'a>(cx: &mut Errors, attrs: &'a [Attribute]) -> AggregateAttrs<'a> {
    let mut out = AggregateAttrs::default();
    for attr in attrs
        .iter()
        .filter(|attr| attr.path().is_ident("aggregate"))
    {
        out.original.get_or_insert(attr);
        let _ = parse_keys(cx, attr, |meta| {
            out.given.push(key_name(&meta.path));
            let slot = if meta.path.is_ident("event") {
                &mut out.event
            } else if meta.path.is_ident("command") {
                &mut out.command
            } else if meta.path.is_ident("error") {
                &mut out.error
            } else if meta.path.is_ident("services") {
                &mut out.services
            } else if meta.path.is_ident("name") {
                let name = string_value(meta, r#"name = "bank_account""#)?;
                return set_once(&mut out.name, name, meta, "aggregate");
            } else if meta.path.is_ident("shares_event") {
                if out.shares_event {
                    return Err(meta.error("duplicate `shares_event` in `#[aggregate(...)]`"));
                }
                out.shares_event = true;
                return Ok(());
            } else {
                return Err(unknown_key(
                    meta,
                    "aggregate",
                    "`event`, `command`, `error`, `services`, `name` or `shares_event`",
                ));
            };
            let ty = type_value(meta)?;
            set_once(slot, ty, meta, "aggregate")
        });
    }
    out
}

/// The keys of the `#[projection(...)]` attributes of a struct.
#[derive(Default)]
pub(crate) struct ProjectionAttrs<'a> {
    /// The first `#[projection(...)]` attribute, for error spans.
    pub original: Option<&'a Attribute>,
    /// `event = Type`.
    pub event: Option<Type>,
    /// `sink = Type`.
    pub sink: Option<Type>,
    /// `name = "..."`: the projection's name.
    pub name: Option<LitStr>,
    /// `apply(...)`: the variants handled, in order.
    pub apply: Option<HandleList>,
    /// The keys given, well-formed or not: a key with a bad value is not
    /// also reported missing.
    pub given: Vec<String>,
}

/// The list of `apply(Variant = method, Variant, ...)`.
pub(crate) struct HandleList {
    /// The `apply` key, for error spans.
    pub key: Path,
    /// The list's parentheses, for error spans.
    pub parens: proc_macro2::Span,
    pub entries: Vec<HandleEntry>,
    /// Whether an entry was malformed (then an empty list is no news).
    pub wrong: bool,
}

/// One `Variant = method` (or `Variant`) of a `apply(...)` list.
pub(crate) struct HandleEntry {
    /// The event enum's variant.
    pub variant: Ident,
    /// The method named after `=`, if any (else the variant in snake case).
    pub method: Option<Ident>,
}

/// Reads the `#[projection(...)]` attributes of a struct.
pub(crate) fn projection_attrs<'a>(cx: &mut Errors, attrs: &'a [Attribute]) -> ProjectionAttrs<'a> {
    let mut out = ProjectionAttrs::default();
    // The mistakes inside a `apply(...)` list, one per entry.
    let mut entry_errors = Vec::new();
    for attr in attrs
        .iter()
        .filter(|attr| attr.path().is_ident("projection"))
    {
        out.original.get_or_insert(attr);
        let _ = parse_keys(cx, attr, |meta| {
            out.given.push(key_name(&meta.path));
            let slot = if meta.path.is_ident("event") {
                &mut out.event
            } else if meta.path.is_ident("sink") {
                &mut out.sink
            } else if meta.path.is_ident("name") {
                let name = string_value(meta, r#"name = "balances""#)?;
                return set_once(&mut out.name, name, meta, "projection");
            } else if meta.path.is_ident("apply") {
                let list = handle_list(meta, &mut entry_errors)?;
                return set_once(&mut out.apply, list, meta, "projection");
            } else {
                return Err(unknown_key(
                    meta,
                    "projection",
                    "`event`, `sink`, `apply` or `name`",
                ));
            };
            let ty = type_value(meta)?;
            set_once(slot, ty, meta, "projection")
        });
        for error in entry_errors.drain(..) {
            cx.push(error);
        }
    }
    out
}

/// The value of `apply(Variant = method, Variant, ...)`. A malformed
/// entry goes into `errors` and the list goes on with the next one.
fn handle_list(meta: &ParseNestedMeta, errors: &mut Vec<syn::Error>) -> syn::Result<HandleList> {
    let example = "apply(Opened = opened, Deposited)";
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(format!(
            "expected a list of the variants handled, like `{example}`"
        )));
    }
    let content;
    let parens = syn::parenthesized!(content in meta.input);
    let mut list = HandleList {
        key: meta.path.clone(),
        parens: parens.span.join(),
        entries: Vec::new(),
        wrong: false,
    };
    while !content.is_empty() {
        match handle_entry(&content) {
            Ok(entry) => list.entries.push(entry),
            Err(error) => {
                list.wrong = true;
                errors.push(error);
                skip_rest(&content)?;
            }
        }
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    Ok(list)
}

/// One `Variant = method` or `Variant` of a `apply(...)` list.
fn handle_entry(input: ParseStream) -> syn::Result<HandleEntry> {
    let path = input.call(Path::parse_mod_style).map_err(|error| {
        syn::Error::new(
            error.span(),
            "expected the name of a variant of the event enum, like `Opened`",
        )
    })?;
    let Some(variant) = path.get_ident().cloned() else {
        let last = &path.segments[path.segments.len() - 1].ident;
        return Err(syn::Error::new_spanned(
            &path,
            format!("name the variant alone: write `{last}`, not a path"),
        ));
    };
    let variant_name = variant.unraw();
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            return Err(syn::Error::new_spanned(
                &lit,
                format!(
                    "a handler is a method, not a string: write `{variant_name} = {}`",
                    lit.value()
                ),
            ));
        }
        let method = input.parse::<Ident>().map_err(|error| {
            let example = method_for(&variant)
                .map_or_else(|| String::from("method_name"), |method| method.to_string());
            syn::Error::new(
                error.span(),
                format!(
                    "expected the name of a method after `=`, like `{variant_name} = {example}`"
                ),
            )
        })?;
        if !(input.is_empty() || input.peek(Token![,])) {
            return Err(input.error("expected `,` after the method name"));
        }
        Ok(HandleEntry {
            variant,
            method: Some(method),
        })
    } else if input.is_empty() || input.peek(Token![,]) {
        Ok(HandleEntry {
            variant,
            method: None,
        })
    } else {
        Err(input.error(format!(
            "expected `{variant_name}` or `{variant_name} = method_name`"
        )))
    }
}

/// The keys of the `#[serde(...)]` attributes in `attrs`, such as `rename`
/// or `tag`. Values are skipped, and so are malformed attributes: serde's
/// own derive reports those.
pub(crate) fn serde_keys(attrs: &[Attribute]) -> Vec<Path> {
    let mut keys = Vec::new();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            keys.push(meta.path.clone());
            skip_rest(meta.input)
        });
    }
    keys
}

/// Runs `key` on each `key` or `key = value` of `attr`, records its error
/// if it fails, and goes on with the next key. Returns whether any key was
/// wrong.
fn parse_keys(
    cx: &mut Errors,
    attr: &Attribute,
    mut key: impl FnMut(&ParseNestedMeta) -> syn::Result<()>,
) -> bool {
    let mut errors = Vec::new();
    let parsed = attr.parse_nested_meta(|meta| {
        match key(&meta) {
            Ok(()) => Ok(()),
            Err(error) => {
                errors.push(error);
                // The value may be partly read: go on at the next key.
                skip_rest(meta.input)
            }
        }
    });
    let wrong = !errors.is_empty() || parsed.is_err();
    for error in errors {
        cx.push(error);
    }
    if let Err(error) = parsed {
        cx.push(error);
    }
    wrong
}

/// Consumes the tokens up to the next `,` of an attribute's list.
fn skip_rest(input: ParseStream) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// The key as written, for messages.
fn key_name(path: &Path) -> String {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    segments.join("::")
}

fn unknown_key(meta: &ParseNestedMeta, attr: &str, expected: &str) -> syn::Error {
    let key = key_name(&meta.path);
    syn::Error::new_spanned(
        &meta.path,
        format!("unknown key `{key}` in `#[{attr}(...)]`; expected {expected}"),
    )
}

/// Stores a key's value, or reports the key as given twice.
fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &ParseNestedMeta,
    attr: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        let key = key_name(&meta.path);
        return Err(syn::Error::new_spanned(
            &meta.path,
            format!("duplicate key `{key}` in `#[{attr}(...)]`"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// A key that takes no value, like `id` in `#[command(id)]`.
fn flag(meta: &ParseNestedMeta, attr: &str) -> syn::Result<()> {
    if meta.input.is_empty() || meta.input.peek(Token![,]) {
        return Ok(());
    }
    let key = key_name(&meta.path);
    Err(meta.error(format!("`{key}` takes no value: write `#[{attr}({key})]`")))
}

/// Checks for the `=` of `key = value`; `example` shows the whole pair.
fn expect_eq(meta: &ParseNestedMeta, example: &str) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        Ok(())
    } else {
        Err(meta.error(format!("expected `{example}`")))
    }
}

/// The value of `key = "..."`.
fn string_value(meta: &ParseNestedMeta, example: &str) -> syn::Result<LitStr> {
    expect_eq(meta, example)?;
    let key = key_name(&meta.path);
    let message = format!("expected a string literal for `{key}`, like `{example}`");
    let input = meta.value()?;
    if input.peek(Lit) {
        match input.parse::<Lit>()? {
            Lit::Str(lit) => Ok(lit),
            other => Err(syn::Error::new_spanned(other, message)),
        }
    } else {
        Err(input.error(message))
    }
}

/// The value of `version = N`.
fn version_value(meta: &ParseNestedMeta) -> syn::Result<Version> {
    expect_eq(meta, "version = 2")?;
    let message = "expected an integer literal for `version`, like `version = 2`";
    let input = meta.value()?;
    if input.peek(Lit) {
        match input.parse::<Lit>()? {
            Lit::Int(lit) => {
                let value = lit.base10_parse::<u32>().map_err(|_| {
                    syn::Error::new_spanned(&lit, "a schema version must fit in a `u32`")
                })?;
                Ok(Version { value, lit })
            }
            other => Err(syn::Error::new_spanned(other, message)),
        }
    } else {
        Err(input.error(message))
    }
}

/// The value of `upcaster = path::to::function`.
fn path_value(meta: &ParseNestedMeta) -> syn::Result<Path> {
    expect_eq(meta, "upcaster = upcast_account_event")?;
    let input = meta.value()?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new_spanned(
            &lit,
            format!(
                "`upcaster` takes a function's path, not a string: write `upcaster = {}`",
                lit.value()
            ),
        ));
    }
    input.parse::<Path>().map_err(|error| {
        syn::Error::new(
            error.span(),
            "expected a function's path for `upcaster`, like `upcaster = upcast_account_event`",
        )
    })
}

/// The value of `key = Type`.
fn type_value(meta: &ParseNestedMeta) -> syn::Result<Type> {
    let key = key_name(&meta.path);
    expect_eq(meta, &format!("{key} = Type"))?;
    let input = meta.value()?;
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new_spanned(
            &lit,
            format!(
                "`{key}` takes a type, not a string: write `{key} = {}`",
                lit.value()
            ),
        ));
    }
    input.parse::<Type>().map_err(|error| {
        syn::Error::new(
            error.span(),
            format!("expected a type for `{key}`, like `{key} = AccountEvent`"),
        )
    })
}
