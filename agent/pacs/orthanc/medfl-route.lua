-- Forward every new CR or DX instance, and every CT or MR instance, to the medfl agent (the
-- modality named "medfl" in Orthanc's DicomModalities). The agent scores radiographs (an SR
-- back) and, when agent.toml sets [pacs] seg_model_file, segments each complete CT/MR series
-- (a DICOM SEG back); without seg_model_file it refuses CT/MR, so drop them here at such a site.
-- Instances sent by Lua itself and the agent's own results (modality SR and SEG) are not
-- forwarded, so nothing loops.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if origin['RequestOrigin'] ~= 'Lua' and (modality == 'CR' or modality == 'DX' or modality == 'CT'
      or modality == 'MR') then
    SendToModality(instanceId, 'medfl')
  end
end
