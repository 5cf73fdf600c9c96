"""The whole field of view: tiles with overlap, one shared calibration, the lens's field-dependent
aberrations, stitched mosaics (Qt-free; beside `uafp_gui.recon`, whose engine it runs per tile).

`tiles` plans the tiles, `region` reads one tile's pixels, `calibrate` makes the one calibration,
`aberration` the lens-inspection report, `stitch` the mosaics, `pipeline` runs it all
(`reconstruct_full_field`, with the executor as a parameter).
"""
