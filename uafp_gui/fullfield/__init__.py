"""The whole field of view: tiles reconstructed with one shared calibration, stitched, run in parallel
(locally or on a Dask cluster) and written as a result folder with OME mosaics."""
