"""Evaluation: feature extraction, distances, Market-1501 / CUHK03 metrics, re-ranking,
the metrics table / JSON and the ranked-list figure.

`distance.pairwise_distance`, `metrics.evaluate` / `metrics.evaluate_features`,
`rerank.re_ranking` / `rerank.re_ranking_features`, `cuhk03_protocol.evaluate_cuhk03`,
`report.metrics_table` / `report.write_metrics_json`, `figure.ranked_list_figure`;
`extractor` / `export` embed images, `evaluator` ties them together for eval.py and
`result_dirs` says where results go (`eval/step_<N>/`, `eval/latest`).
"""
