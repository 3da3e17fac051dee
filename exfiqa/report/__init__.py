"""What each notebook section shows: the analyses, tables, figures and run card of ``make paper``."""
