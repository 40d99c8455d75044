"""vLLM's metrics, read two ways: scraped from each ready pod (``scrape``), or queried from a
Prometheus that already scrapes them (``promquery``); one text-format parser (``promtext``) and one
reading of vLLM's metric names (``vllm``) serve both.
"""
