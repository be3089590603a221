//! The Keepsake agent (`keepsake`): change detection, local catalog, backup pipeline, upload and restore.
