"""Evaluation: feature extraction, distances, Market-1501 metrics, re-ranking, the
metrics table / JSON and the ranked-list figure.

`distance.pairwise_distance`, `metrics.evaluate` / `metrics.evaluate_features`,
`rerank.re_ranking` / `rerank.re_ranking_features`, `scoring.score_features`,
`report.metrics_table` / `report.write_metrics_json`, `figure.ranked_list_figure`;
`extractor` / `export` embed images, `settings` checks `config.eval`,
`evaluator.Evaluator` ties them together for training and eval.py (one per evaluation
set, `eval_sets`), returning an `result.EvalResult`; `writers` prints and writes it
(table, metrics.json, the ranked list and the diagnostic pictures: `roc`,
`activation_maps`, `diagnostic_figures`) and `result_dirs` says where results go
(`eval/step_<N>/[<set>/]`, `eval/latest`).
"""
