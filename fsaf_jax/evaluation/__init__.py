"""Evaluation: feature extraction, distances, Market-1501 metrics, re-ranking, the
metrics table / JSON and the ranked-list figure.

`distance.pairwise_distance`, `metrics.evaluate` / `metrics.evaluate_features`,
`rerank.re_ranking` / `rerank.re_ranking_features`, `scoring.score_features`,
`report.metrics_table` / `report.write_metrics_json`, `figure.ranked_list_figure`;
`extractor` / `export` embed images, `settings` checks `config.eval`,
`evaluator.Evaluator` ties them together for training and eval.py and `result_dirs`
says where results go (`eval/step_<N>/`, `eval/latest`).
"""
