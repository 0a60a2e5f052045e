"""Offline training: data, teachers, distillation, evaluation and export. Never imports the web stack."""
