//! The Azure Functions custom-handler protocol: invocation payloads and answers,
//! `function.json` definitions, NCRONTAB schedules, and the standalone runtime that fires
//! timers and delivers queue outputs when no Functions host is present.

pub mod function_json;
pub mod invocation;
pub mod ncrontab;
pub mod standalone;

pub use function_json::{Binding, Catalog, DefinitionError, FunctionDefinition, Trigger};
pub use invocation::{InvocationRequest, InvocationResponse, PayloadError, TimerInfo};
pub use ncrontab::Schedule;
pub use standalone::{InvokeError, InvokeFuture, Invoker, Standalone};
