//! One function per pipeline stage. Stages that train or evaluate come in
//! two forms: `*_in` works inside a run directory someone else opened (the
//! pipeline), the plain form opens its own (a command).

mod data;
mod distill;
mod llm_teacher;
mod recommend;
mod select;
mod student;
mod teacher;
mod teacher_plan;

pub use data::{eval_popularity, popularity, prepare};
pub(crate) use distill::teacher_run_secs;
pub use distill::{distill, distill_device, DistillOutcome, DistillRequest};
pub use llm_teacher::{
    eval_teacher, load_teacher, teacher_infer, train_teacher, TeacherInferRequest,
    TrainTeacherRequest, TrainedTeacher,
};
pub use recommend::{
    checkpoint_data, load_for, rank_batch, recommend, resolve_item, top_k, Query, Recommendation,
};
pub use select::{select, selected_rows, SelectOutcome, SelectRequest};
pub use student::{eval_student, train_student, train_student_in, StudentEval, TrainedStudent};
pub use teacher::{
    merge_shards, teacher_from_files, teacher_from_student, CacheBuild, CacheJob, CACHE_BUILD_FILE,
};
pub use teacher_plan::{plan_for, plan_teacher, PlannedTeacher, TeacherPlanRequest};
