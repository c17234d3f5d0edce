//! The Azure Functions custom-handler protocol: invocation payloads and answers,
//! `function.json` definitions, NCRONTAB schedules, and the standalone runtime that fires
//! timers and listens to Storage queues when no Functions host is present.

pub mod function_json;
pub mod invocation;
pub mod ncrontab;
pub mod standalone;
pub mod storage_queues;

pub use function_json::{Binding, Catalog, DefinitionError, FunctionDefinition, Trigger};
pub use invocation::{
    InvocationRequest, InvocationResponse, PayloadError, QueueTrigger, TimerInfo,
};
pub use ncrontab::Schedule;
pub use standalone::{InvokeError, InvokeFuture, Invoker, Standalone, StartError};
pub use storage_queues::{MAX_DEQUEUE_COUNT, QueueSettings, poison_queue_name};
