//! The generated impls. Each derive parses its input into the model
//! (ast.rs), checks it (valid.rs) and, if nothing is wrong, emits one impl
//! inside `const _: () = { ... };`, naming every item by absolute path
//! through the framework's crate so that the user's own names cannot
//! shadow ours.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use proc_macro_crate::{crate_name, FoundCrate};
use quote::quote;
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident};

use crate::ast::{
    ident_string, AggregateInput, CommandField, CommandInput, CommandShape, EventInput, EventShape,
    ProjectionInput, Style,
};
use crate::ctxt::Errors;
use crate::valid;

/// The path of the crate that defines the traits, as the user's crate sees
/// it: `evently-core` if it depends on it (or is it), else the `evently` facade.
fn root() -> TokenStream {
    for (package, itself) in [("evently-core", "evently_core"), ("evently", "evently")] {
        match crate_name(package) {
            // Both crates declare `extern crate self as <name>;`.
            Ok(FoundCrate::Itself) => {
                let ident = Ident::new(itself, Span::call_site());
                return quote!(::#ident);
            }
            Ok(FoundCrate::Name(name)) => {
                let ident = Ident::new(&name, Span::call_site());
                return quote!(::#ident);
            }
            Err(_) => {}
        }
    }
    quote!(::evently_core)
}

/// `#[derive(Event)]`.
pub(crate) fn derive_event(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Errors::default();
    let model = EventInput::from_syn(&mut cx, input);
    if let Some(model) = &model {
        valid::event(&mut cx, model);
    }
    cx.finish()?;
    Ok(model.map(|model| event(&model)).unwrap_or_default())
}

/// `#[derive(Command)]`.
pub(crate) fn derive_command(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Errors::default();
    let model = CommandInput::from_syn(&mut cx, input);
    if let Some(model) = &model {
        valid::command(&mut cx, model);
    }
    cx.finish()?;
    Ok(model.map(|model| command(&model)).unwrap_or_default())
}

/// `#[derive(Aggregate)]`.
pub(crate) fn derive_aggregate(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Errors::default();
    let model = AggregateInput::from_syn(&mut cx, input);
    if let Some(model) = &model {
        valid::aggregate(&mut cx, model);
    }
    cx.finish()?;
    Ok(model.map(|model| aggregate(&model)).unwrap_or_default())
}

/// `#[derive(Projection)]`.
pub(crate) fn derive_projection(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut cx = Errors::default();
    let model = ProjectionInput::from_syn(&mut cx, input);
    if let Some(model) = &model {
        valid::projection(&mut cx, model);
    }
    cx.finish()?;
    Ok(model.map(|model| projection(&model)).unwrap_or_default())
}

fn event(input: &EventInput) -> TokenStream {
    let root = root();
    let private = quote!(#root::__private);
    let ident = input.ident;
    let str = quote!(::core::primitive::str);
    let u32 = quote!(::core::primitive::u32);

    // Per variant: the pattern that matches its values, its stored name, its
    // version and the Rust variant name serde knows it by.
    let (body, names) = match &input.shape {
        EventShape::Enum(variants) => {
            let inherited = input.version();
            let patterns: Vec<TokenStream> = variants
                .iter()
                .map(|variant| pattern(variant.ident, variant.style))
                .collect();
            let names: Vec<String> = variants.iter().map(|v| v.event_type()).collect();
            let versions: Vec<u32> = variants.iter().map(|v| v.version(inherited)).collect();
            let serde_names: Vec<String> = variants.iter().map(|v| ident_string(v.ident)).collect();
            let body = quote! {
                fn event_type(&self) -> &'static #str {
                    match self {
                        #(#patterns => #names,)*
                    }
                }

                fn event_type_of_variant(
                    variant: &#str,
                ) -> #private::Option<&'static #str> {
                    match variant {
                        #(#serde_names => #private::Option::Some(#names),)*
                        _ => #private::Option::None,
                    }
                }

                fn schema_version(&self) -> #u32 {
                    match self {
                        #(#patterns => #versions,)*
                    }
                }

                fn current_version(event_type: &#str) -> #private::Option<#u32> {
                    match event_type {
                        #(#names => #private::Option::Some(#versions),)*
                        _ => #private::Option::None,
                    }
                }

                fn encode(&self) -> #private::Result<#root::Payload, #root::EncodeError> {
                    #private::encode_variant(self)
                }

                fn decode(
                    event_type: &#str,
                    schema_version: #u32,
                    payload: &#root::Payload,
                ) -> #private::Result<Self, #root::DecodeErrorKind> {
                    let (__variant, __current): (&'static #str, #u32) = match event_type {
                        #(#names => (#serde_names, #versions),)*
                        _ => {
                            return #private::Result::Err(
                                #root::DecodeErrorKind::unknown_event_type(
                                    <Self as #root::Event>::EVENT_TYPES,
                                ),
                            );
                        }
                    };
                    if schema_version != __current {
                        return #private::Result::Err(
                            #root::DecodeErrorKind::UnsupportedSchemaVersion {
                                found: schema_version,
                                current: __current,
                            },
                        );
                    }
                    #private::decode_variant(__variant, payload)
                }
            };
            (body, names)
        }
        EventShape::Struct => {
            let name = input.event_type();
            let version = input.version();
            let body = quote! {
                fn event_type(&self) -> &'static #str {
                    #name
                }

                fn schema_version(&self) -> #u32 {
                    #version
                }

                fn current_version(event_type: &#str) -> #private::Option<#u32> {
                    if event_type == #name {
                        #private::Option::Some(#version)
                    } else {
                        #private::Option::None
                    }
                }

                fn encode(&self) -> #private::Result<#root::Payload, #root::EncodeError> {
                    #private::encode_struct(self)
                }

                fn decode(
                    event_type: &#str,
                    schema_version: #u32,
                    payload: &#root::Payload,
                ) -> #private::Result<Self, #root::DecodeErrorKind> {
                    if event_type != #name {
                        return #private::Result::Err(
                            #root::DecodeErrorKind::unknown_event_type(
                                <Self as #root::Event>::EVENT_TYPES,
                            ),
                        );
                    }
                    if schema_version != #version {
                        return #private::Result::Err(
                            #root::DecodeErrorKind::UnsupportedSchemaVersion {
                                found: schema_version,
                                current: #version,
                            },
                        );
                    }
                    #private::decode_struct(payload)
                }
            };
            (body, vec![name])
        }
    };
    let upcast = input.attrs.upcaster.as_ref().map(|upcaster| {
        // Spanned at the path, so a function of the wrong shape is reported
        // where the user named it.
        let call = quote::quote_spanned!(syn::spanned::Spanned::span(upcaster)=>
            let upgraded: #private::Option<#private::Vec<#root::upcast::OldEvent>> = #upcaster(old);
            upgraded
        );
        quote! {
            fn upcast(
                old: #root::upcast::OldEvent,
            ) -> #private::Option<#private::Vec<#root::upcast::OldEvent>> {
                #call
            }
        }
    });
    let glue = apply_glue(input);
    quote! {
        #glue

        const _: () = {
            #[automatically_derived]
            impl #root::Event for #ident {
                const EVENT_TYPES: &'static [&'static #str] = &[#(#names),*];

                #body

                fn aggregate_type() -> #private::Option<&'static #str> {
                    // `AggregateEvent` if an aggregate claims this type
                    // (its derive implements it), else `None`: resolved at
                    // compile time by method lookup on a concrete type.
                    #[allow(unused_imports)]
                    use #private::owner::{Owned as _, Unowned as _};
                    #[allow(clippy::needless_borrow)]
                    (&&#private::owner::Probe::<Self>::NEW).aggregate_type()
                }

                #upcast
            }
        };
    }
}

/// For `#[derive(Projection)]`, per variant of an event enum: a hidden
/// method that calls a handler with three leading arguments (the
/// projection, its sink, the recorded event) and the variant's fields by
/// reference, in declaration order, if the value is that variant. The
/// projection's derive sees only variant names; this side knows the fields.
fn apply_glue(input: &EventInput) -> TokenStream {
    let EventShape::Enum(variants) = &input.shape else {
        return TokenStream::new();
    };
    let (ident, vis) = (input.ident, input.vis);
    let methods = variants.iter().map(|variant| {
        let name = apply_glue_name(variant.ident);
        let var = variant.ident;
        let members: Vec<&syn::Member> = variant.fields.iter().map(|(m, _)| m).collect();
        let bindings: Vec<Ident> = (0..members.len())
            .map(|i| Ident::new(&format!("__field{i}"), Span::call_site()))
            .collect();
        let types = variant.fields.iter().map(|(_, ty)| ty);
        quote! {
            #[doc(hidden)]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            #[inline]
            #vis fn #name<'__e, __P, __S, __R, __Out>(
                &'__e self,
                projection: __P,
                sink: __S,
                recorded: __R,
                handler: impl ::core::ops::FnOnce(__P, __S, __R #(, &'__e #types)*) -> __Out,
            ) -> ::core::option::Option<__Out> {
                match self {
                    Self::#var { #(#members: #bindings,)* } => ::core::option::Option::Some(
                        handler(projection, sink, recorded #(, #bindings)*),
                    ),
                    #[allow(unreachable_patterns)]
                    _ => ::core::option::Option::None,
                }
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #ident {
            #(#methods)*
        }
    }
}

/// The name of a variant's glue method (see [`apply_glue`]).
fn apply_glue_name(variant: &Ident) -> Ident {
    let name = variant.to_string();
    let name = name.strip_prefix("r#").unwrap_or(&name);
    Ident::new(&format!("__es_apply_{name}"), variant.span())
}

/// The pattern that matches any value of a variant.
fn pattern(variant: &Ident, style: Style) -> TokenStream {
    match style {
        Style::Unit => quote!(Self::#variant),
        Style::Tuple => quote!(Self::#variant(..)),
        Style::Struct => quote!(Self::#variant { .. }),
    }
}

fn command(input: &CommandInput) -> TokenStream {
    let root = root();
    let private = quote!(#root::__private);
    let ident = input.ident;
    let str = quote!(::core::primitive::str);

    // The id's `to_string` call, spanned at the field's type so that a type
    // without `Display` is reported there rather than at the derive.
    let to_string = |field: &CommandField, value: TokenStream| {
        let span = Span::call_site().located_at(field.ty.span());
        respan(quote!(#private::ToString::to_string(#value)), span)
    };

    // valid.rs has made sure that every variant has its id field.
    let (aggregate_id, command_type) = match &input.shape {
        CommandShape::Struct(body) => {
            let id = body.id_field().map(|field| {
                let member = &field.member;
                to_string(field, quote!(&self.#member))
            });
            let name = body.command_type();
            (quote!(#id), quote!(#name))
        }
        CommandShape::Enum(variants) => {
            let id_arms = variants.iter().filter_map(|variant| {
                let field = variant.id_field()?;
                let (name, member) = (variant.ident, &field.member);
                let id = to_string(field, quote!(__id));
                Some(quote!(Self::#name { #member: __id, .. } => #id,))
            });
            let type_arms = variants.iter().map(|variant| {
                let pattern = pattern(variant.ident, variant.style);
                let name = variant.command_type();
                quote!(#pattern => #name,)
            });
            (
                quote!(match self { #(#id_arms)* }),
                quote!(match self { #(#type_arms)* }),
            )
        }
    };

    let routed = input.routed().then(|| {
        quote! {
            #[automatically_derived]
            impl #root::RoutedCommand for #ident {
                fn aggregate_id(&self) -> #private::String {
                    #aggregate_id
                }
            }
        }
    });

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #root::Command for #ident {
                fn command_type(&self) -> &'static #str {
                    #command_type
                }
            }

            #routed
        };
    }
}

fn aggregate(input: &AggregateInput) -> TokenStream {
    let root = root();
    let private = quote!(#root::__private);
    let ident = input.ident;
    let attrs = &input.attrs;
    let (Some(event), Some(command), Some(error)) = (&attrs.event, &attrs.command, &attrs.error)
    else {
        unreachable!("valid.rs reports a missing `event`, `command` or `error`")
    };
    let name = input.type_name();
    let this = quote!(<Self as #root::Aggregate>);

    let (services, decide) = match &attrs.services {
        Some(services) => (
            quote!(#services),
            quote!(#ident::decide(self, command, services)),
        ),
        None => (
            quote!(()),
            quote! {
                let _ = services;
                #private::ready(#ident::decide(self, command))
            },
        ),
    };

    // The trait's methods forward to the user's inherent methods of the same
    // names. Where one is missing, the path resolves to the trait's method
    // itself: the recursion lint, denied and spanned at the struct's name
    // (so that it is not silenced as a macro's), makes that an error.
    let methods = respan(
        quote! {
            #[deny(unconditional_recursion)]
            fn decide<'a>(
                &'a self,
                command: #this::Command,
                services: &'a #this::Services,
            ) -> impl #private::Future<
                Output = #private::Result<#private::Vec<#this::Event>, #this::Error>,
            > + ::core::marker::Send + 'a {
                #decide
            }

            #[deny(unconditional_recursion)]
            fn apply(&mut self, event: &#this::Event) {
                #ident::apply(self, event)
            }
        },
        ident.span(),
    );

    // The event type belongs to this aggregate: projections take its events
    // from this aggregate's streams only, and a second aggregate claiming
    // the same event type does not compile.
    let claim = (!attrs.shares_event).then(|| {
        quote! {
            #[automatically_derived]
            impl #root::AggregateEvent for #event {
                const AGGREGATE_TYPE: &'static ::core::primitive::str = #name;
            }
        }
    });

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #root::Aggregate for #ident {
                const TYPE: &'static ::core::primitive::str = #name;
                type Event = #event;
                type Command = #command;
                type Error = #error;
                type Services = #services;

                #methods
            }

            #claim
        };
    }
}

fn projection(input: &ProjectionInput) -> TokenStream {
    let root = root();
    let private = quote!(#root::__private);
    let trait_ = quote!(#root::projection::Projection);
    let ident = input.ident;
    let attrs = &input.attrs;
    let (Some(event), Some(sink)) = (&attrs.event, &attrs.sink) else {
        unreachable!("valid.rs reports a missing `event` or `sink`")
    };
    let name = input.name();
    let str = quote!(::core::primitive::str);

    // valid.rs has made sure that every handler has a method name.
    let handlers: Vec<_> = input.handlers().into_iter().flatten().collect();
    let variants: Vec<String> = handlers.iter().map(|h| ident_string(&h.variant)).collect();
    let arms = handlers.iter().map(|handler| {
        let (variant, method) = (&handler.variant, &handler.method);
        // The pattern at the variant's name in the attribute, and the call
        // at the method's, so that a variant the enum lacks, or a method
        // missing, not `async` or with the wrong parameters, is reported
        // there. The Event derive's glue passes the variant's fields.
        let pattern = respan(quote!(__Event::#variant { .. }), variant.span());
        let glue = apply_glue_name(variant);
        let call = respan(
            quote! {
                match __Event::#glue(&event.data, self, sink, event, #ident::#method) {
                    #private::Option::Some(future) => future.await,
                    #private::Option::None => #private::Result::Ok(()),
                }
            },
            method.span(),
        );
        quote!(#pattern => #call,)
    });

    quote! {
        const _: () = {
            // Names the event enum's variants in patterns, whatever the
            // type's path looks like.
            type __Event = #event;

            #[automatically_derived]
            impl #trait_ for #ident {
                type Event = #event;
                type Sink = #sink;

                fn name(&self) -> &#str {
                    #name
                }

                fn handles(&self) -> &[&#str] {
                    static HANDLES: #private::OnceLock<#private::Vec<&'static #str>> =
                        #private::OnceLock::new();
                    HANDLES.get_or_init(|| {
                        #private::handled_event_types::<#event>(&[#(#variants),*])
                    })
                }

                fn apply(
                    &self,
                    sink: &mut <Self as #trait_>::Sink,
                    event: &#root::RecordedEvent<<Self as #trait_>::Event>,
                ) -> impl #private::Future<
                    Output = #private::Result<(), #root::projection::HandlerError>,
                > + ::core::marker::Send {
                    async move {
                        match &event.data {
                            #(#arms)*
                            #[allow(unreachable_patterns)]
                            _ => #private::Result::Ok(()),
                        }
                    }
                }
            }
        };
    }
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|token| match token {
            TokenTree::Group(group) => {
                let mut group = Group::new(group.delimiter(), respan(group.stream(), span));
                group.set_span(span);
                TokenTree::Group(group)
            }
            mut token => {
                token.set_span(span);
                token
            }
        })
        .collect()
}
